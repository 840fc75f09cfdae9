//! The nftables form of a [`Model`]: named sets, verdict maps and chains of one `inet` table,
//! and the scripts that create it whole or turn one ruleset into another in one transaction.
//!
//! ```text
//! forward-egress   hook forward, priority filter:      ct state established,related accept
//!                                                      iifname <bridge> ip saddr vmap @egress
//! forward-ingress  hook forward, priority filter + 1:  ct state established,related accept
//!                                                      oifname <bridge> ip daddr vmap @ingress
//! map egress    { <pod ip> : goto pod-<ip>-eg }        one per local pod isolated for egress
//! map ingress   { <pod ip> : goto pod-<ip>-in }
//! pod-<ip>-in:  ip saddr <ip> accept; jump pol-<id>-in; ...; drop
//! pol-<id>-in:  one rule per peer/port combination of each ingress rule, ending in accept,
//!               matching sets peers-<id> (the addresses a selector peer picks, shared by
//!               every rule using that selector), pol-<id>-in<n>-blocks (ipBlock intervals)
//!               and pol-<id>-in<n>-named (pod . protocol . port of named ports)
//! ```
//!
//! Two base chains because an `accept` ends only its own base chain: a packet from an isolated
//! pod to an isolated pod must be accepted by the egress chain and then by the ingress chain.
//! Pods that are not isolated have no map entry, so their packets pass after two lookups.
//! A policy's chains and sets are named by a hash of namespace/name (names may be longer than
//! nftables allows) and carry namespace/name as a comment; a peer set by a hash of its
//! selector, which is its comment. A pod's change therefore touches each selector's set once,
//! however many policies use the selector.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use crate::model::{
    Direction, IpRange, Model, NamedPort, PeerSelector, Peers, PolicyRef, PortRange, Ports,
    Protocol, Rule,
};

/// How many elements one `add element`/`delete element` command carries.
const ELEMENTS_PER_COMMAND: usize = 256;

/// A named set or map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Set {
    /// A verdict map rather than a set.
    pub map: bool,
    /// What goes between the braces of `add set`: type, flags, comment.
    pub spec: String,
    /// Key → value (empty for a set).
    pub elements: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    /// What goes between the braces of `add chain`: hook and policy, or a comment.
    pub spec: String,
    pub rules: Vec<String>,
}

/// Every set and chain of the table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ruleset {
    pub sets: BTreeMap<String, Set>,
    pub chains: BTreeMap<String, Chain>,
}

fn suffix(dir: Direction) -> &'static str {
    match dir {
        Direction::Ingress => "in",
        Direction::Egress => "eg",
    }
}

fn map_name(dir: Direction) -> &'static str {
    match dir {
        Direction::Ingress => "ingress",
        Direction::Egress => "egress",
    }
}

fn pod_chain(ip: Ipv4Addr, dir: Direction) -> String {
    format!("pod-{ip}-{}", suffix(dir))
}

/// FNV-1a 64 of `key` (and `salt` when > 0), as 16 hex digits: stable across builds, so an
/// upgraded agent finds its chains and sets under the same names.
fn hash_id(key: &str, salt: u32) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let salt = salt.to_be_bytes();
    let extra: &[u8] = if salt == [0; 4] { &[] } else { &salt };
    for &b in key.as_bytes().iter().chain(extra) {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// A comment: printable ASCII other than `"` and `\\` (anything else becomes `?`), at most
/// 120 bytes (nftables allows 128).
fn comment(text: String) -> String {
    let mut clean: String = text
        .chars()
        .map(|c| {
            if (c.is_ascii_graphic() || c == ' ') && c != '"' && c != '\\' {
                c
            } else {
                '?'
            }
        })
        .collect();
    clean.truncate(120);
    format!("comment \"{clean}\";")
}

fn proto_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
    }
}

fn port_element(r: &PortRange) -> String {
    let proto = proto_name(r.protocol);
    if r.first == r.last {
        format!("{proto} . {}", r.first)
    } else {
        format!("{proto} . {}-{}", r.first, r.last)
    }
}

fn named_element(n: &NamedPort) -> String {
    format!("{} . {} . {}", n.ip, proto_name(n.protocol), n.port)
}

/// An interval element: `a`, `a/len` when the range is a CIDR block, else `a-b`.
fn range_element(r: &IpRange) -> String {
    let (first, last) = (u32::from(r.first), u32::from(r.last));
    if first == last {
        return r.first.to_string();
    }
    let span = u64::from(last - first) + 1;
    if span.is_power_of_two() && u64::from(first) % span == 0 {
        return format!("{}/{}", r.first, 32 - span.trailing_zeros());
    }
    format!("{}-{}", r.first, r.last)
}

fn plain_set(spec: String, elements: impl IntoIterator<Item = String>) -> Set {
    Set {
        map: false,
        spec,
        elements: elements.into_iter().map(|e| (e, String::new())).collect(),
    }
}

impl Ruleset {
    /// The ruleset enforcing `model`, with local pods behind `bridge`.
    pub fn from_model(model: &Model, bridge: &str) -> Ruleset {
        let mut rs = Ruleset::default();
        for (dir, hook, iface, field) in [
            (Direction::Egress, "filter", "iifname", "saddr"),
            (Direction::Ingress, "filter + 1", "oifname", "daddr"),
        ] {
            let base = format!("forward-{}", map_name(dir));
            rs.chains.insert(
                base,
                Chain {
                    spec: format!("type filter hook forward priority {hook}; policy accept;"),
                    rules: vec![
                        "ct state established,related accept".to_owned(),
                        format!("{iface} \"{bridge}\" ip {field} vmap @{}", map_name(dir)),
                    ],
                },
            );
        }

        let ids = unique_ids(model.policies.keys(), |p| p.to_string());
        let peer_sets = unique_ids(model.peer_sets.keys(), |s| s.to_string());
        for (selector, ips) in &model.peer_sets {
            let spec = format!("type ipv4_addr; {}", comment(selector.to_string()));
            let elements = ips.iter().map(Ipv4Addr::to_string);
            rs.sets.insert(
                format!("peers-{}", peer_sets[selector]),
                plain_set(spec, elements),
            );
        }

        for dir in [Direction::Ingress, Direction::Egress] {
            let mut map = Set {
                map: true,
                spec: "type ipv4_addr : verdict;".to_owned(),
                elements: BTreeMap::new(),
            };
            for (ip, policies) in model.isolated(dir) {
                let chain = pod_chain(*ip, dir);
                map.elements.insert(ip.to_string(), format!("goto {chain}"));
                let own = match dir {
                    Direction::Ingress => "saddr",
                    Direction::Egress => "daddr",
                };
                // A pod can always reach itself (through a Service, the packet comes back).
                let mut rules = vec![format!("ip {own} {ip} accept")];
                rules.extend(
                    policies
                        .iter()
                        .filter_map(|p| ids.get(p))
                        .map(|id| format!("jump pol-{id}-{}", suffix(dir))),
                );
                rules.push("drop".to_owned());
                rs.chains.insert(
                    chain,
                    Chain {
                        spec: String::new(),
                        rules,
                    },
                );
            }
            rs.sets.insert(map_name(dir).to_owned(), map);
        }

        for (policy, rules) in &model.policies {
            let id = &ids[policy];
            for dir in [Direction::Ingress, Direction::Egress] {
                if let Some(list) = rules.get(dir) {
                    rs.add_policy_chain(policy, id, dir, list, &peer_sets);
                }
            }
        }
        rs
    }

    fn add_policy_chain(
        &mut self,
        policy: &PolicyRef,
        id: &str,
        dir: Direction,
        list: &[Rule],
        peer_sets: &BTreeMap<&PeerSelector, String>,
    ) {
        let dir_word = match dir {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        };
        let (remote, sfx) = match dir {
            Direction::Ingress => ("saddr", "in"),
            Direction::Egress => ("daddr", "eg"),
        };
        let mut lines = Vec::new();
        for (n, rule) in list.iter().enumerate() {
            let prefix = format!("pol-{id}-{sfx}{n}");
            let about = |what: &str| comment(format!("{policy} {dir_word} rule {n} {what}"));
            let mut peer_clauses = Vec::new();
            match &rule.peers {
                Peers::Any => peer_clauses.push(String::new()),
                Peers::Only { selectors, blocks } => {
                    // A selector without a set in the model picks nobody.
                    for id in selectors.iter().filter_map(|s| peer_sets.get(s)) {
                        peer_clauses.push(format!("ip {remote} @peers-{id} "));
                    }
                    if let Some(blocks) = blocks {
                        let name = format!("{prefix}-blocks");
                        peer_clauses.push(format!("ip {remote} @{name} "));
                        let spec = format!("type ipv4_addr; flags interval; {}", about("ipBlocks"));
                        self.sets
                            .insert(name, plain_set(spec, blocks.iter().map(range_element)));
                    }
                }
            }
            let (ranges, named) = match &rule.ports {
                Ports::Any => {
                    lines.extend(peer_clauses.iter().map(|p| format!("{p}accept")));
                    continue;
                }
                Ports::Only { ranges, named } => (ranges, named),
            };
            if !ranges.is_empty() {
                let list: Vec<String> = ranges.iter().map(port_element).collect();
                let ports = format!("meta l4proto . th dport {{ {} }} ", list.join(", "));
                lines.extend(peer_clauses.iter().map(|p| format!("{p}{ports}accept")));
            }
            if let Some(named) = named {
                let name = format!("{prefix}-named");
                let ports = format!("ip daddr . meta l4proto . th dport @{name} ");
                match dir {
                    Direction::Ingress => {
                        lines.extend(peer_clauses.iter().map(|p| format!("{p}{ports}accept")))
                    }
                    // The entries are the peers' own ports: the peer check is built in.
                    Direction::Egress => lines.push(format!("{ports}accept")),
                }
                let spec = format!(
                    "type ipv4_addr . inet_proto . inet_service; {}",
                    about("named ports")
                );
                self.sets
                    .insert(name, plain_set(spec, named.iter().map(named_element)));
            }
        }
        self.chains.insert(
            format!("pol-{id}-{sfx}"),
            Chain {
                spec: comment(format!("{policy} {dir_word}")),
                rules: lines,
            },
        );
    }

    /// A transaction that replaces table `inet <table>` (created if missing) by this ruleset.
    pub fn full_script(&self, table: &str) -> String {
        let mut s = Script::new(table);
        s.line(format_args!("add table inet {table}"));
        s.line(format_args!("delete table inet {table}"));
        s.line(format_args!(
            "add table inet {table} {{ comment \"NetworkPolicy enforcement by skiff\"; }}"
        ));
        for (name, set) in &self.sets {
            s.add_set(name, set);
        }
        for (name, chain) in &self.chains {
            s.add_chain(name, chain);
        }
        for (name, set) in &self.sets {
            s.elements("add", name, set.elements.iter());
        }
        for (name, chain) in &self.chains {
            s.rules(name, chain);
        }
        s.text
    }

    /// A transaction turning `old` (what the table holds) into `self`; empty when they are
    /// equal. Elements, rules of changed chains, and new or vanished sets and chains are
    /// touched, nothing else. `None` when a set or chain kept its name but changed its
    /// declaration: then only [`Ruleset::full_script`] will do.
    pub fn diff_script(&self, old: &Ruleset, table: &str) -> Option<String> {
        let spec_changed = self.sets.iter().any(|(n, s)| {
            old.sets
                .get(n)
                .is_some_and(|o| (o.map, &o.spec) != (s.map, &s.spec))
        }) || self
            .chains
            .iter()
            .any(|(n, c)| old.chains.get(n).is_some_and(|o| o.spec != c.spec));
        if spec_changed {
            return None;
        }
        let mut s = Script::new(table);
        // New sets and chains first: rules and map elements below refer to them.
        for (name, set) in &self.sets {
            if !old.sets.contains_key(name) {
                s.add_set(name, set);
            }
        }
        for (name, chain) in &self.chains {
            if !old.chains.contains_key(name) {
                s.add_chain(name, chain);
            }
        }
        // Deletions before additions: an interval may be replaced by one overlapping it.
        for (name, set) in &self.sets {
            if let Some(before) = old.sets.get(name) {
                let gone = before
                    .elements
                    .iter()
                    .filter(|(k, v)| set.elements.get(*k) != Some(v));
                s.elements("delete", name, gone);
            }
        }
        for (name, set) in &self.sets {
            let before = old.sets.get(name);
            let added = set
                .elements
                .iter()
                .filter(|(k, v)| before.is_none_or(|b| b.elements.get(*k) != Some(v)));
            s.elements("add", name, added);
        }
        for (name, chain) in &self.chains {
            match old.chains.get(name) {
                Some(before) if before.rules == chain.rules => {}
                Some(_) => {
                    s.line(format_args!("flush chain inet {table} {name}"));
                    s.rules(name, chain);
                }
                None => s.rules(name, chain),
            }
        }
        // Vanished chains may jump to each other: empty them all, then delete them.
        let gone_chains: Vec<&String> = old
            .chains
            .keys()
            .filter(|n| !self.chains.contains_key(*n))
            .collect();
        for name in &gone_chains {
            s.line(format_args!("flush chain inet {table} {name}"));
        }
        for name in &gone_chains {
            s.line(format_args!("delete chain inet {table} {name}"));
        }
        for name in old.sets.keys().filter(|n| !self.sets.contains_key(*n)) {
            s.line(format_args!("delete set inet {table} {name}"));
        }
        Some(s.text)
    }

    /// How many elements its sets and maps hold, and how many rules its chains.
    pub fn size(&self) -> (usize, usize) {
        (
            self.sets.values().map(|s| s.elements.len()).sum(),
            self.chains.values().map(|c| c.rules.len()).sum(),
        )
    }

    /// The names of the chains, for tests and logs.
    pub fn chain_names(&self) -> BTreeSet<&str> {
        self.chains.keys().map(String::as_str).collect()
    }
}

/// A short id per key, unique among `keys` (a hash collision takes the next salt), assigned in
/// key order so that it depends only on the keys.
fn unique_ids<'k, K: Ord + 'k>(
    keys: impl Iterator<Item = &'k K>,
    text: impl Fn(&K) -> String,
) -> BTreeMap<&'k K, String> {
    let mut taken = HashSet::new();
    keys.map(|k| {
        let key = text(k);
        let id = (0..)
            .map(|salt| hash_id(&key, salt))
            .find(|id| !taken.contains(id))
            .unwrap_or_else(|| unreachable!("fewer keys than ids"));
        taken.insert(id.clone());
        (k, id)
    })
    .collect()
}

/// A transaction that deletes table `inet <table>` if it exists.
pub fn delete_script(table: &str) -> String {
    format!("add table inet {table}\ndelete table inet {table}\n")
}

struct Script<'a> {
    table: &'a str,
    text: String,
}

impl<'a> Script<'a> {
    fn new(table: &'a str) -> Self {
        Script {
            table,
            text: String::new(),
        }
    }

    fn line(&mut self, args: std::fmt::Arguments<'_>) {
        let _ = self.text.write_fmt(args);
        self.text.push('\n');
    }

    fn add_set(&mut self, name: &str, set: &Set) {
        let kind = if set.map { "map" } else { "set" };
        let table = self.table;
        self.line(format_args!(
            "add {kind} inet {table} {name} {{ {} }}",
            set.spec
        ));
    }

    fn add_chain(&mut self, name: &str, chain: &Chain) {
        let table = self.table;
        if chain.spec.is_empty() {
            self.line(format_args!("add chain inet {table} {name}"));
        } else {
            self.line(format_args!(
                "add chain inet {table} {name} {{ {} }}",
                chain.spec
            ));
        }
    }

    fn rules(&mut self, name: &str, chain: &Chain) {
        let table = self.table;
        for rule in &chain.rules {
            self.line(format_args!("add rule inet {table} {name} {rule}"));
        }
    }

    /// `add element`/`delete element` commands for `elements` (deletion by key only).
    fn elements<'e>(
        &mut self,
        verb: &str,
        set: &str,
        elements: impl Iterator<Item = (&'e String, &'e String)>,
    ) {
        let table = self.table;
        let rendered: Vec<String> = elements
            .map(|(k, v)| {
                if v.is_empty() || verb == "delete" {
                    k.clone()
                } else {
                    format!("{k} : {v}")
                }
            })
            .collect();
        for chunk in rendered.chunks(ELEMENTS_PER_COMMAND) {
            self.line(format_args!(
                "{verb} element inet {table} {set} {{ {} }}",
                chunk.join(", ")
            ));
        }
    }
}

#[cfg(test)]
mod tests;
