//! The node's side of the cluster network (the flannel host-gw role): packets between pods on
//! different nodes are routed by the nodes, node to node, without encapsulation or NAT.
//!
//! - Forwarding is switched on per interface (`net.ipv4.conf.<link>.forwarding`), only on the
//!   pod bridge and on the link that holds the node's address; the global switch stays as it
//!   was, so a host running one node does not start routing between its other interfaces.
//! - Every other node's pod CIDR gets a route via that node's address, tagged
//!   [`ROUTE_PROTOCOL`](crate::netlink::ROUTE_PROTOCOL) so reconciling never touches another
//!   route. Nodes must share an L2 segment (as the nodes of `skiff cluster` do). With the
//!   VXLAN backend instead (flannel's `vxlan`), a device `skiff.vx` (VNI 1, UDP 8472, a MAC
//!   derived from the node's address) holds the node's pod CIDR network address as a /32, and
//!   every other node's pod CIDR is routed `via <its network address> dev skiff.vx onlink`,
//!   with a permanent neighbour entry for that address and a forwarding entry sending its MAC
//!   to the node's address: nodes only need to reach each other's addresses.
//! - A guard (nftables table `ip skiff-node-<bridge>`) drops what pods send towards anything outside
//!   the cluster's pod CIDR unless it answers a connection made to them or was sent to a
//!   Service (DNATed by the service proxy, e.g. to the API server's address): with forwarding
//!   on, nothing from a pod leaves through the node's uplink. With `masquerade_outside` (off by
//!   default) the guard instead masquerades such packets behind the node's address.
//! - Bridged traffic between the node's pods passes the `ip`/`inet` netfilter hooks (the
//!   bridge's `nf_call_iptables` option, not the global sysctl), so NetworkPolicy rules and the
//!   service proxy see it.
//! - The cluster DNS address is put on the pod bridge (as a /32: no route comes with it), so
//!   the node answers DNS on it itself, like NodeLocal DNSCache, without a DNAT. (Not a dummy
//!   link: this machine's kernel has none; the bridge also goes away with the node.)

use std::io::Write as _;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use tracing::{info, warn};

use crate::Ipv4Cidr;
use crate::netlink::{Netlink, Route};

/// The nftables table the guard of the pods on `bridge` lives in (one per bridge, so that two
/// nodes sharing a namespace in tests do not replace each other's).
pub fn guard_table(bridge: &str) -> String {
    format!("skiff-node-{bridge}")
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Netlink(#[from] crate::netlink::Error),
    #[error("enabling forwarding on {link}: {source}")]
    Forwarding {
        link: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the pod bridge {0} does not exist")]
    NoBridge(String),
    #[error("running nft: {0}")]
    Nft(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How packets reach other nodes' pods.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Backend {
    /// Routed via the other node's address: nodes must share an L2 segment.
    #[default]
    HostGw,
    /// Encapsulated in VXLAN (VNI 1, UDP 8472, as flannel) to the other node's address, for
    /// nodes that only reach each other through routers.
    Vxlan,
}

/// The VXLAN device of the [`Backend::Vxlan`] backend.
pub const VXLAN_DEVICE: &str = "skiff.vx";
const VXLAN_VNI: u32 = 1;
const VXLAN_PORT: u16 = 8472;
/// Outer IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14) headers.
const VXLAN_OVERHEAD: u32 = 50;

/// The MAC of a node's VXLAN device, derived from the node's address, so that every node can
/// compute its peers' without exchanging them (flannel publishes them in annotations instead).
pub fn vtep_mac(node_ip: Ipv4Addr) -> [u8; 6] {
    let o = node_ip.octets();
    [0x02, 0x53, o[0], o[1], o[2], o[3]]
}

/// Another node's pods: its pod CIDR, behind its address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Peer {
    pub pod_cidr: Ipv4Cidr,
    pub node_ip: Ipv4Addr,
}

/// What the node's network needs to know.
#[derive(Clone, Debug)]
pub struct NodeNetConfig {
    /// The pod bridge (it must exist: [`crate::PodNetwork::new`] makes it).
    pub bridge: String,
    /// The node's address (`InternalIP`); forwarding is enabled on the link holding it.
    pub node_ip: Ipv4Addr,
    /// Every node's pod CIDR lies inside it; pods may send only there.
    pub cluster_cidr: Ipv4Cidr,
    /// Put on the bridge, if set.
    pub cluster_dns: Option<Ipv4Addr>,
    /// Let pods reach addresses outside the cluster, masqueraded behind the node's address
    /// (off by default: then the guard drops such packets).
    pub masquerade_outside: bool,
    pub backend: Backend,
    /// This node's pod CIDR (the VXLAN device takes its network address).
    pub pod_cidr: Ipv4Cidr,
}

/// The node's cluster network in the current network namespace.
pub struct NodeNetwork {
    nl: Netlink,
    cfg: NodeNetConfig,
}

impl NodeNetwork {
    /// Enables forwarding, installs the guard and the DNS address. Idempotent.
    pub async fn prepare(cfg: NodeNetConfig) -> Result<NodeNetwork> {
        let nl = Netlink::open(None).await?;
        let mut forwarding = vec![cfg.bridge.clone()];
        match uplink_of(&nl, cfg.node_ip).await? {
            Some(link) if link != "lo" => forwarding.push(link),
            _ => {}
        }
        for link in &forwarding {
            let path = format!("/proc/sys/net/ipv4/conf/{link}/forwarding");
            std::fs::write(&path, b"1").map_err(|source| Error::Forwarding {
                link: link.clone(),
                source,
            })?;
        }
        nft(&guard_script(
            &cfg.bridge,
            cfg.cluster_cidr,
            cfg.masquerade_outside,
        ))?;
        let bridge = nl
            .link(&cfg.bridge)
            .await?
            .ok_or_else(|| Error::NoBridge(cfg.bridge.clone()))?;
        nl.set_bridge_nf_call_iptables(&bridge).await?;
        if let Some(dns) = cfg.cluster_dns
            && !nl.ipv4_addresses(&bridge).await?.contains(&(dns, 32))
        {
            nl.add_address(&bridge, dns, 32).await?;
        }
        if cfg.backend == Backend::Vxlan {
            prepare_vxlan(&nl, &cfg).await?;
        }
        info!(bridge = %cfg.bridge, forwarding = ?forwarding, backend = ?cfg.backend, "node network prepared");
        Ok(NodeNetwork { nl, cfg })
    }

    pub fn config(&self) -> &NodeNetConfig {
        &self.cfg
    }

    /// Makes the way to every peer's pods exactly `peers`: routes via the peers (host-gw), or
    /// routes, neighbours and forwarding entries over the VXLAN device.
    pub async fn sync_peers(&self, peers: &[Peer]) -> Result<()> {
        match self.cfg.backend {
            Backend::HostGw => {
                let routes: Vec<Route> = peers
                    .iter()
                    .map(|p| route_to(p.pod_cidr, p.node_ip))
                    .collect();
                self.sync_routes(&routes).await
            }
            Backend::Vxlan => self.sync_vxlan(peers).await,
        }
    }

    async fn sync_vxlan(&self, peers: &[Peer]) -> Result<()> {
        let vx = self
            .nl
            .link(VXLAN_DEVICE)
            .await?
            .ok_or_else(|| Error::NoBridge(VXLAN_DEVICE.to_owned()))?;
        // Remote VTEP addresses (each peer's pod CIDR network address) and MACs.
        let neigh: Vec<(Ipv4Addr, Vec<u8>)> = peers
            .iter()
            .map(|p| (p.pod_cidr.network(), vtep_mac(p.node_ip).to_vec()))
            .collect();
        let fdb: Vec<(Vec<u8>, Ipv4Addr)> = peers
            .iter()
            .map(|p| (vtep_mac(p.node_ip).to_vec(), p.node_ip))
            .collect();
        let routes: Vec<Route> = peers
            .iter()
            .map(|p| Route {
                destination: p.pod_cidr.network(),
                prefix_len: p.pod_cidr.prefix_len(),
                gateway: p.pod_cidr.network(),
                onlink_dev: Some(vx.index),
            })
            .collect();
        // Entries first, then the routes that use them; on removal the other way round.
        for (mac, remote) in self.nl.vxlan_fdb(&vx).await? {
            if !fdb.contains(&(mac.clone(), remote)) {
                self.nl.delete_vxlan_fdb(&vx, &mac, remote).await?;
            }
        }
        for (ip, mac) in self.nl.permanent_neighbours(&vx).await? {
            if !neigh.contains(&(ip, mac)) {
                self.nl.delete_neighbour(&vx, ip).await?;
            }
        }
        for (mac, remote) in &fdb {
            self.nl.add_vxlan_fdb(&vx, mac, *remote).await?;
        }
        for (ip, mac) in &neigh {
            self.nl.replace_neighbour(&vx, *ip, mac).await?;
        }
        self.sync_routes(&routes).await
    }

    /// Makes the skiff-tagged routes exactly `wanted`: adds the missing, deletes the others.
    pub async fn sync_routes(&self, wanted: &[Route]) -> Result<()> {
        let have = self.nl.skiff_routes().await?;
        for r in &have {
            if !wanted.contains(r) {
                info!(route = ?r, "deleting a route to a pod CIDR");
                self.nl.delete_route(r).await?;
            }
        }
        for r in wanted {
            if !have.contains(r) {
                info!(route = ?r, "adding a route to a pod CIDR");
                self.nl.replace_route(r).await?;
            }
        }
        Ok(())
    }

    /// Removes the guard and the routes (the agent leaves the DNS link and the bridge, which
    /// running pods still use).
    pub async fn remove_routes_and_guard(&self) -> Result<()> {
        self.sync_routes(&[]).await?;
        let table = guard_table(&self.cfg.bridge);
        if let Err(e) = nft(&format!("delete table ip {table}\n")) {
            warn!(error = %e, "removing the guard table");
        }
        Ok(())
    }
}

/// The route to `cidr` via `via`, unless it is our own.
pub fn route_to(cidr: Ipv4Cidr, via: Ipv4Addr) -> Route {
    Route {
        destination: cidr.network(),
        prefix_len: cidr.prefix_len(),
        gateway: via,
        onlink_dev: None,
    }
}

/// The VXLAN device: created if missing, the node's pod CIDR network address as a /32, up.
async fn prepare_vxlan(nl: &Netlink, cfg: &NodeNetConfig) -> Result<()> {
    let uplink_mtu = match uplink_of(nl, cfg.node_ip).await? {
        Some(name) => nl.link(&name).await?.and_then(|l| l.mtu).unwrap_or(1500),
        None => 1500,
    };
    if nl.link(VXLAN_DEVICE).await?.is_none() {
        nl.add_vxlan(
            VXLAN_DEVICE,
            VXLAN_VNI,
            cfg.node_ip,
            VXLAN_PORT,
            vtep_mac(cfg.node_ip),
            uplink_mtu.saturating_sub(VXLAN_OVERHEAD),
        )
        .await?;
    }
    let vx = nl
        .link(VXLAN_DEVICE)
        .await?
        .ok_or_else(|| Error::NoBridge(VXLAN_DEVICE.to_owned()))?;
    let own = (cfg.pod_cidr.network(), 32);
    if !nl.ipv4_addresses(&vx).await?.contains(&own) {
        nl.add_address(&vx, own.0, own.1).await?;
    }
    nl.set_link(
        &vx,
        crate::netlink::LinkChange {
            up: true,
            ..Default::default()
        },
    )
    .await?;
    std::fs::write(
        format!("/proc/sys/net/ipv4/conf/{VXLAN_DEVICE}/forwarding"),
        b"1",
    )
    .map_err(|source| Error::Forwarding {
        link: VXLAN_DEVICE.to_owned(),
        source,
    })?;
    Ok(())
}

/// The name of the link holding `ip`, if any.
async fn uplink_of(nl: &Netlink, ip: Ipv4Addr) -> Result<Option<String>> {
    for link in nl.links().await? {
        if nl
            .ipv4_addresses(&link)
            .await?
            .iter()
            .any(|(a, _)| *a == ip)
        {
            return Ok(Some(link.name));
        }
    }
    Ok(None)
}

/// The guard, replaced whole (it is three rules).
fn guard_script(bridge: &str, cluster: Ipv4Cidr, masquerade_outside: bool) -> String {
    let table = guard_table(bridge);
    // `add` then `delete` then `add`: the table exists for the delete whether or not it did
    // before, and the whole script is one transaction.
    let mut s = format!(
        "add table ip {table}\n\
         delete table ip {table}\n\
         table ip {table} {{\n\
         \tchain forward {{\n\
         \t\ttype filter hook forward priority filter; policy accept;\n\
         \t\tct state established,related accept\n\
         \t\tct status dnat accept\n"
    );
    if masquerade_outside {
        s.push_str(&format!(
            "\t}}\n\
             \tchain postrouting {{\n\
             \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
             \t\tip saddr {cluster} ip daddr != {cluster} oifname != \"{bridge}\" masquerade\n\
             \t}}\n\
             }}\n"
        ));
    } else {
        s.push_str(&format!(
            "\t\tiifname \"{bridge}\" ip daddr != {cluster} drop\n\
             \t}}\n\
             }}\n"
        ));
    }
    s
}

/// Runs `nft -f -` with `script` as one transaction.
pub fn nft(script: &str) -> Result<()> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Nft(format!("starting nft: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| Error::Nft(format!("writing to nft: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| Error::Nft(format!("waiting for nft: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Nft(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_drops_only_what_leaves_the_cluster_from_pods() {
        let s = guard_script("skiff0", "10.42.0.0/16".parse().unwrap(), false);
        assert!(s.contains("iifname \"skiff0\" ip daddr != 10.42.0.0/16 drop"));
        assert!(s.find("established").unwrap() < s.find("drop").unwrap());
        assert!(!s.contains("masquerade"));
    }

    #[test]
    fn masquerade_outside_replaces_the_drop() {
        let s = guard_script("skiff0", "10.42.0.0/16".parse().unwrap(), true);
        assert!(!s.contains("drop"));
        assert!(s.contains(
            "ip saddr 10.42.0.0/16 ip daddr != 10.42.0.0/16 oifname != \"skiff0\" masquerade"
        ));
    }
}
