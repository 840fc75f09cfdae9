//! An rtnetlink connection bound to one network namespace, and the few link, address and route
//! operations the pod network needs.
//!
//! A netlink socket acts on the namespace it was created in, so a connection to another
//! namespace is made by creating the socket on a thread inside it (`netns::run_in_async`) and
//! driving it from the caller's runtime.

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol,
};
use rtnetlink::{
    LinkBridge, LinkBridgePort, LinkMessageBuilder, LinkUnspec, LinkVeth, LinkVxlan,
    RouteMessageBuilder,
};
use tokio::task::JoinHandle;

use crate::netns;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("opening a netlink socket in {}: {source}", where_(.netns))]
    Socket {
        netns: Option<PathBuf>,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Netns(#[from] netns::Error),
    #[error("{what} in {}: {source}", where_(.netns))]
    Request {
        what: String,
        netns: Option<PathBuf>,
        #[source]
        source: io::Error,
    },
}

fn where_(netns: &Option<PathBuf>) -> String {
    match netns {
        Some(path) => format!("network namespace {}", path.display()),
        None => "the agent's network namespace".to_owned(),
    }
}

/// The errno of a netlink error reply, or an `other` error for a malformed exchange.
fn to_io(e: rtnetlink::Error) -> io::Error {
    match e {
        rtnetlink::Error::NetlinkError(msg) => msg.to_io(),
        other => io::Error::other(other.to_string()),
    }
}

/// What the pod network reads about a link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub kind: Option<InfoKind>,
    pub master: Option<u32>,
    pub mtu: Option<u32>,
    pub up: bool,
}

impl Link {
    fn from_message(msg: LinkMessage) -> Link {
        let mut link = Link {
            index: msg.header.index,
            name: String::new(),
            kind: None,
            master: None,
            mtu: None,
            up: msg.header.flags.contains(LinkFlags::Up),
        };
        for attr in msg.attributes {
            match attr {
                LinkAttribute::IfName(name) => link.name = name,
                LinkAttribute::Controller(index) => link.master = Some(index),
                LinkAttribute::Mtu(mtu) => link.mtu = Some(mtu),
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        if let LinkInfo::Kind(kind) = info {
                            link.kind = Some(kind);
                        }
                    }
                }
                _ => {}
            }
        }
        link
    }
}

/// Changes to make to a link; `None` leaves a setting as it is.
#[derive(Clone, Copy, Debug, Default)]
pub struct LinkChange {
    pub mtu: Option<u32>,
    pub master: Option<u32>,
    pub up: bool,
}

pub struct Netlink {
    handle: rtnetlink::Handle,
    netns: Option<PathBuf>,
    connection: JoinHandle<()>,
}

impl Drop for Netlink {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

impl Netlink {
    /// Connects to the namespace at `netns`, or to the caller's own with `None`. Must be called
    /// from inside a tokio runtime, which then drives the connection.
    pub async fn open(netns: Option<&Path>) -> Result<Netlink> {
        let socket_err = |source| Error::Socket {
            netns: netns.map(Path::to_owned),
            source,
        };
        let (connection, handle, _) = match netns {
            None => rtnetlink::new_connection().map_err(socket_err)?,
            Some(path) => {
                let runtime = tokio::runtime::Handle::current();
                netns::run_in_async(path, move || {
                    // Registers the socket with the caller's runtime, from this thread.
                    let _entered = runtime.enter();
                    rtnetlink::new_connection()
                })
                .await?
                .map_err(socket_err)?
            }
        };
        Ok(Netlink {
            handle,
            netns: netns.map(Path::to_owned),
            connection: tokio::spawn(connection),
        })
    }

    fn err(&self, what: impl Into<String>, e: rtnetlink::Error) -> Error {
        Error::Request {
            what: what.into(),
            netns: self.netns.clone(),
            source: to_io(e),
        }
    }

    /// The link named `name`, if there is one.
    pub async fn link(&self, name: &str) -> Result<Option<Link>> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute();
        match links.try_next().await {
            Ok(msg) => Ok(msg.map(Link::from_message)),
            Err(e) if errno(&e) == Some(ENODEV) => Ok(None),
            Err(e) => Err(self.err(format!("reading link {name}"), e)),
        }
    }

    pub async fn links(&self) -> Result<Vec<Link>> {
        let links = self.handle.link().get().execute();
        let links: Vec<LinkMessage> = links
            .try_collect()
            .await
            .map_err(|e| self.err("listing links", e))?;
        Ok(links.into_iter().map(Link::from_message).collect())
    }

    pub async fn add_bridge(&self, name: &str, mtu: u32) -> Result<()> {
        let msg = LinkBridge::new(name).mtu(mtu).build();
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(|e| self.err(format!("creating bridge {name}"), e))
    }

    /// Creates a veth pair: `name` here, `peer` in the namespace open at `peer_netns`, both with
    /// `mtu`.
    pub async fn add_veth(
        &self,
        name: &str,
        peer: &str,
        mtu: u32,
        peer_netns: BorrowedFd<'_>,
    ) -> Result<()> {
        let peer_msg = LinkMessageBuilder::<LinkUnspec>::new()
            .name(peer)
            .mtu(mtu)
            .setns_by_fd(peer_netns.as_raw_fd())
            .build();
        let msg = LinkVeth::new(name, peer)
            .mtu(mtu)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
            .build();
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(|e| self.err(format!("creating veth pair {name}/{peer}"), e))
    }

    /// Makes bridged IPv4 traffic on bridge `link` pass the `ip`/`inet` netfilter hooks (the
    /// bridge's own `nf_call_iptables` option, not the global sysctl), so NetworkPolicy rules see
    /// packets between pods on the node.
    pub async fn set_bridge_nf_call_iptables(&self, link: &Link) -> Result<()> {
        use rtnetlink::packet_route::link::InfoBridge;
        let msg = LinkMessageBuilder::<LinkBridge>::new(&link.name)
            .index(link.index)
            .append_info_data(InfoBridge::NfCallIpTables(true))
            .build();
        self.handle.link().change(msg).execute().await.map_err(|e| {
            self.err(
                format!("setting nf_call_iptables on bridge {}", link.name),
                e,
            )
        })
    }

    /// Turns on hairpin mode on bridge port `link`, so a frame may leave by the port it came
    /// in: a pod reaching a Service that load-balances back to the pod itself. (Port options
    /// travel in `RTM_NEWLINK`; `RTM_SETLINK` ignores them silently.)
    pub async fn set_bridge_port_hairpin(&self, link: &Link) -> Result<()> {
        let msg = LinkBridgePort::new(link.index).hairpin(true).build();
        self.handle.link().change(msg).execute().await.map_err(|e| {
            self.err(
                format!("setting hairpin mode on bridge port {}", link.name),
                e,
            )
        })
    }

    pub async fn set_link(&self, link: &Link, change: LinkChange) -> Result<()> {
        let mut msg = LinkUnspec::new_with_index(link.index);
        if let Some(mtu) = change.mtu {
            msg = msg.mtu(mtu);
        }
        if let Some(master) = change.master {
            msg = msg.controller(master);
        }
        if change.up {
            msg = msg.up();
        }
        self.handle
            .link()
            .set(msg.build())
            .execute()
            .await
            .map_err(|e| self.err(format!("configuring link {}", link.name), e))
    }

    /// Deletes a link (both ends, for a veth); one already gone is fine.
    pub async fn delete_link(&self, link: &Link) -> Result<()> {
        match self.handle.link().del(link.index).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(ENODEV) => Ok(()),
            Err(e) => Err(self.err(format!("deleting link {}", link.name), e)),
        }
    }

    /// The IPv4 addresses on a link, with their prefix lengths.
    pub async fn ipv4_addresses(&self, link: &Link) -> Result<Vec<(Ipv4Addr, u8)>> {
        let msgs = self
            .handle
            .address()
            .get()
            .set_link_index_filter(link.index)
            .execute();
        let msgs: Vec<_> = msgs
            .try_collect()
            .await
            .map_err(|e| self.err(format!("listing addresses of {}", link.name), e))?;
        let mut addrs = Vec::new();
        for msg in msgs {
            let local = msg.attributes.iter().find_map(|attr| match attr {
                AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
                _ => None,
            });
            if let Some(ip) = local {
                addrs.push((ip, msg.header.prefix_len));
            }
        }
        Ok(addrs)
    }

    /// Adds an address, or leaves it if it is there already.
    pub async fn add_address(&self, link: &Link, ip: Ipv4Addr, prefix_len: u8) -> Result<()> {
        self.handle
            .address()
            .add(link.index, IpAddr::V4(ip), prefix_len)
            .replace()
            .execute()
            .await
            .map_err(|e| {
                self.err(
                    format!("adding address {ip}/{prefix_len} to {}", link.name),
                    e,
                )
            })
    }

    pub async fn delete_address(&self, link: &Link, ip: Ipv4Addr, prefix_len: u8) -> Result<()> {
        let msgs = self
            .handle
            .address()
            .get()
            .set_link_index_filter(link.index)
            .set_address_filter(IpAddr::V4(ip))
            .set_prefix_length_filter(prefix_len)
            .execute();
        let msgs: Vec<_> = msgs
            .try_collect()
            .await
            .map_err(|e| self.err(format!("finding address {ip} on {}", link.name), e))?;
        for msg in msgs {
            match self.handle.address().del(msg).execute().await {
                Ok(()) => {}
                Err(e) if errno(&e) == Some(EADDRNOTAVAIL) => {}
                Err(e) => {
                    let what = format!("deleting address {ip}/{prefix_len} from {}", link.name);
                    return Err(self.err(what, e));
                }
            }
        }
        Ok(())
    }

    /// Sets the default route to go via `gateway` on `link`, replacing any other.
    pub async fn replace_default_route(&self, link: &Link, gateway: Ipv4Addr) -> Result<()> {
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(gateway)
            .output_interface(link.index)
            .build();
        self.handle
            .route()
            .add(route)
            .replace()
            .execute()
            .await
            .map_err(|e| self.err(format!("setting the default route via {gateway}"), e))
    }
}

/// The protocol number skiff tags its routes to other nodes' pod CIDRs with (`ip route` shows
/// `proto 83`), so that reconciling them never touches a route someone else made.
pub const ROUTE_PROTOCOL: u8 = 83;

/// A route to a subnet via a gateway, as [`Netlink::skiff_routes`] lists them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Route {
    pub destination: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
    /// `Some(link index)`: the gateway is on that link without a connected subnet (`dev L
    /// onlink`), as for the VXLAN backend; `None`: found through the connected routes.
    pub onlink_dev: Option<u32>,
}

impl Netlink {
    /// The IPv4 routes of the main table tagged [`ROUTE_PROTOCOL`].
    pub async fn skiff_routes(&self) -> Result<Vec<Route>> {
        let dump = RouteMessageBuilder::<Ipv4Addr>::new().build();
        let msgs: Vec<RouteMessage> = self
            .handle
            .route()
            .get(dump)
            .execute()
            .try_collect()
            .await
            .map_err(|e| self.err("listing routes", e))?;
        Ok(msgs
            .iter()
            .filter(|m| {
                m.header.table == RouteHeader::RT_TABLE_MAIN
                    && m.header.protocol == RouteProtocol::Other(ROUTE_PROTOCOL)
            })
            .filter_map(|m| {
                let mut destination = Ipv4Addr::UNSPECIFIED;
                let mut gateway = None;
                let mut oif = None;
                for a in &m.attributes {
                    match a {
                        RouteAttribute::Destination(RouteAddress::Inet(ip)) => destination = *ip,
                        RouteAttribute::Gateway(RouteAddress::Inet(ip)) => gateway = Some(*ip),
                        RouteAttribute::Oif(i) => oif = Some(*i),
                        _ => {}
                    }
                }
                let onlink = m.header.flags.contains(RouteFlags::Onlink);
                Some(Route {
                    destination,
                    prefix_len: m.header.destination_prefix_length,
                    gateway: gateway?,
                    onlink_dev: if onlink { oif } else { None },
                })
            })
            .collect())
    }

    fn route_message(r: &Route) -> RouteMessage {
        let b = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(r.destination, r.prefix_len)
            .gateway(r.gateway)
            .protocol(RouteProtocol::Other(ROUTE_PROTOCOL));
        match r.onlink_dev {
            Some(dev) => b.output_interface(dev).onlink().build(),
            None => b.build(),
        }
    }

    /// Creates a VXLAN device `name` (VNI `vni`, UDP `port`, sourced from `local`, MAC `mac`,
    /// learning off: its neighbours and forwarding entries are all written by skiff).
    pub async fn add_vxlan(
        &self,
        name: &str,
        vni: u32,
        local: Ipv4Addr,
        port: u16,
        mac: [u8; 6],
        mtu: u32,
    ) -> Result<()> {
        let msg = LinkVxlan::new(name, vni)
            .local(local)
            .port(port)
            .learning(false)
            .mtu(mtu)
            .address(mac.to_vec())
            .build();
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(|e| self.err(format!("creating VXLAN device {name}"), e))
    }

    /// The permanent IPv4 neighbours on `link`: (address, MAC).
    pub async fn permanent_neighbours(&self, link: &Link) -> Result<Vec<(Ipv4Addr, Vec<u8>)>> {
        let msgs: Vec<NeighbourMessage> = self
            .handle
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Inet)
            .execute()
            .try_collect()
            .await
            .map_err(|e| self.err("listing neighbours", e))?;
        Ok(msgs
            .iter()
            .filter(|m| {
                m.header.ifindex == link.index && m.header.state == NeighbourState::Permanent
            })
            .filter_map(|m| {
                let mut ip = None;
                let mut mac = None;
                for a in &m.attributes {
                    match a {
                        NeighbourAttribute::Destination(NeighbourAddress::Inet(i)) => ip = Some(*i),
                        NeighbourAttribute::LinkLayerAddress(l) => mac = Some(l.clone()),
                        _ => {}
                    }
                }
                Some((ip?, mac?))
            })
            .collect())
    }

    /// Sets the permanent neighbour `ip` → `mac` on `link`.
    pub async fn replace_neighbour(&self, link: &Link, ip: Ipv4Addr, mac: &[u8]) -> Result<()> {
        self.handle
            .neighbours()
            .add(link.index, IpAddr::V4(ip))
            .link_layer_address(mac)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(|e| self.err(format!("setting neighbour {ip} on {}", link.name), e))
    }

    pub async fn delete_neighbour(&self, link: &Link, ip: Ipv4Addr) -> Result<()> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.ifindex = link.index;
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
        match self.handle.neighbours().del(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(ENOENT) => Ok(()),
            Err(e) => Err(self.err(format!("deleting neighbour {ip} on {}", link.name), e)),
        }
    }

    /// The forwarding entries of VXLAN device `link` that name a remote: (MAC, remote address).
    pub async fn vxlan_fdb(&self, link: &Link) -> Result<Vec<(Vec<u8>, Ipv4Addr)>> {
        let msgs: Vec<NeighbourMessage> = self
            .handle
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Bridge)
            .execute()
            .try_collect()
            .await
            .map_err(|e| self.err("listing forwarding entries", e))?;
        Ok(msgs
            .iter()
            .filter(|m| m.header.ifindex == link.index)
            .filter_map(|m| {
                let mut dst = None;
                let mut mac = None;
                for a in &m.attributes {
                    match a {
                        // In a bridge-family message the address is not parsed by family.
                        NeighbourAttribute::Destination(NeighbourAddress::Inet(i)) => {
                            dst = Some(*i)
                        }
                        NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => {
                            dst = <[u8; 4]>::try_from(b.as_slice()).ok().map(Ipv4Addr::from)
                        }
                        NeighbourAttribute::LinkLayerAddress(l) => mac = Some(l.clone()),
                        _ => {}
                    }
                }
                Some((mac?, dst?))
            })
            .collect())
    }

    /// Adds the forwarding entry `mac` → `remote` on VXLAN device `link`.
    pub async fn add_vxlan_fdb(&self, link: &Link, mac: &[u8], remote: Ipv4Addr) -> Result<()> {
        self.handle
            .neighbours()
            .add_bridge(link.index, mac)
            .destination(IpAddr::V4(remote))
            .flags(NeighbourFlags::Own)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(|e| {
                self.err(
                    format!("adding a forwarding entry to {remote} on {}", link.name),
                    e,
                )
            })
    }

    pub async fn delete_vxlan_fdb(&self, link: &Link, mac: &[u8], remote: Ipv4Addr) -> Result<()> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Bridge;
        msg.header.ifindex = link.index;
        msg.header.flags = NeighbourFlags::Own;
        msg.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                remote,
            )));
        match self.handle.neighbours().del(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(ENOENT) => Ok(()),
            Err(e) => Err(self.err(format!("deleting the forwarding entry to {remote}"), e)),
        }
    }

    /// Adds (or replaces) the route `r`, tagged [`ROUTE_PROTOCOL`].
    pub async fn replace_route(&self, r: &Route) -> Result<()> {
        self.handle
            .route()
            .add(Self::route_message(r))
            .replace()
            .execute()
            .await
            .map_err(|e| {
                let what = format!(
                    "adding the route to {}/{} via {}",
                    r.destination, r.prefix_len, r.gateway
                );
                self.err(what, e)
            })
    }

    /// Deletes the route `r`; a route already gone is not an error.
    pub async fn delete_route(&self, r: &Route) -> Result<()> {
        match self
            .handle
            .route()
            .del(Self::route_message(r))
            .execute()
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(ESRCH) => Ok(()),
            Err(e) => {
                let what = format!(
                    "deleting the route to {}/{} via {}",
                    r.destination, r.prefix_len, r.gateway
                );
                Err(self.err(what, e))
            }
        }
    }
}

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(msg) => Some(msg.raw_code().abs()),
        _ => None,
    }
}

const ENODEV: i32 = nix::errno::Errno::ENODEV as i32;
const EADDRNOTAVAIL: i32 = nix::errno::Errno::EADDRNOTAVAIL as i32;
const ESRCH: i32 = nix::errno::Errno::ESRCH as i32;
const ENOENT: i32 = nix::errno::Errno::ENOENT as i32;
