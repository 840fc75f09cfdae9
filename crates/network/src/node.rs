//! The node's side of the cluster network (the flannel host-gw role): packets between pods on
//! different nodes are routed by the nodes, node to node, without encapsulation or NAT.
//!
//! - Forwarding is switched on per interface (`net.ipv4.conf.<link>.forwarding`), only on the
//!   pod bridge and on the link that holds the node's address; the global switch stays as it
//!   was, so a host running one node does not start routing between its other interfaces.
//! - Every other node's pod CIDR gets a route via that node's address, tagged
//!   [`ROUTE_PROTOCOL`](crate::netlink::ROUTE_PROTOCOL) so reconciling never touches another
//!   route. Nodes must share an L2 segment (as the nodes of `skiff cluster` do).
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
        info!(bridge = %cfg.bridge, forwarding = ?forwarding, "node network prepared");
        Ok(NodeNetwork { nl, cfg })
    }

    pub fn config(&self) -> &NodeNetConfig {
        &self.cfg
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
    }
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
