//! The pod network of one node: a bridge that carries the node's pod subnet, and per pod a
//! network namespace joined to it by a veth pair, recorded on disk so that a restarted agent
//! finds, completes or removes what an earlier run built.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use rtnetlink::packet_route::link::InfoKind;
use tokio::sync::OwnedMutexGuard;
use tracing::{debug, info, warn};

use crate::ipam::{self, Ipam, Ipv4Cidr};
use crate::netlink::{self, Link, LinkChange, Netlink};
use crate::netns;
use crate::store::{self, Record, Store};

/// The name of a pod's interface inside its namespace.
pub const POD_IFNAME: &str = "eth0";

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid pod network config: {field} {value:?}: {reason}")]
    Config {
        field: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("invalid sandbox id {id:?}: {reason}")]
    InvalidId { id: String, reason: &'static str },
    #[error("link {name} in the node's network namespace is not {expected}; leaving it alone")]
    ForeignLink {
        name: String,
        expected: &'static str,
    },
    #[error("bridge {name} is missing from the node's network namespace")]
    BridgeMissing { name: String },
    #[error("link {name} is missing right after it was created")]
    LinkVanished { name: String },
    #[error("{op} sandbox {id}: {source}")]
    Sandbox {
        op: &'static str,
        id: String,
        #[source]
        source: Box<Error>,
    },
    #[error(transparent)]
    Ipam(#[from] ipam::Error),
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error(transparent)]
    Netns(#[from] netns::Error),
    #[error(transparent)]
    Netlink(#[from] netlink::Error),
    #[error("a blocking task of the pod network failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// How one node's pod network is laid out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BridgeConfig {
    /// The bridge's name, e.g. `skiff0`.
    pub bridge: String,
    /// The node's pod CIDR (`node.spec.podCIDR`); the gateway is its first host address.
    pub subnet: Ipv4Cidr,
    /// Where sandbox records live, e.g. `<data-dir>/agent/network`. One process at a time.
    pub state_dir: PathBuf,
    /// Where pod namespaces are bind-mounted, e.g. `/run/skiff/netns`. Owned by this pod
    /// network: a file in it that no record names is removed as an orphan.
    pub netns_dir: PathBuf,
    /// The MTU of the bridge and of both ends of every veth.
    pub mtu: u32,
    /// The network namespace the bridge and the host-side veths live in (a node of `skiff
    /// cluster`, or a test's). `None` is the agent's own namespace.
    pub node_netns: Option<PathBuf>,
}

impl BridgeConfig {
    /// The defaults: bridge `skiff0`, MTU 1500, the agent's own namespace.
    pub fn new(
        subnet: Ipv4Cidr,
        state_dir: impl Into<PathBuf>,
        netns_dir: impl Into<PathBuf>,
    ) -> Self {
        BridgeConfig {
            bridge: "skiff0".to_owned(),
            subnet,
            state_dir: state_dir.into(),
            netns_dir: netns_dir.into(),
            mtu: 1500,
            node_netns: None,
        }
    }

    fn validate(&self) -> Result<()> {
        let bad = |field, value: String, reason| Error::Config {
            field,
            value,
            reason,
        };
        if let Err(reason) = validate_ifname(&self.bridge) {
            return Err(bad("bridge", self.bridge.clone(), reason));
        }
        if !(68..=65535).contains(&self.mtu) {
            return Err(bad(
                "mtu",
                self.mtu.to_string(),
                "must be between 68 and 65535",
            ));
        }
        for (field, dir) in [
            ("state_dir", &self.state_dir),
            ("netns_dir", &self.netns_dir),
        ] {
            if !dir.is_absolute() {
                return Err(bad(
                    field,
                    dir.display().to_string(),
                    "must be an absolute path",
                ));
            }
        }
        if self.netns_dir.starts_with(&self.state_dir)
            || self.state_dir.starts_with(&self.netns_dir)
        {
            let value = self.netns_dir.display().to_string();
            return Err(bad("netns_dir", value, "must not overlap state_dir"));
        }
        Ok(())
    }
}

/// A pod's network: its namespace and address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sandbox {
    pub id: String,
    /// The namespace file, for the runtime's `linux.namespaces[].path` and for [`crate::run_in`].
    pub netns: PathBuf,
    pub ip: Ipv4Addr,
    pub gateway: Ipv4Addr,
    pub prefix_len: u8,
    /// The node-side end of the pod's veth pair, a port of the bridge.
    pub host_veth: String,
}

/// Checks a network interface name: 1 to 15 bytes of letters, digits, `-`, `_` or `.`.
pub fn validate_ifname(name: &str) -> std::result::Result<(), &'static str> {
    if name.is_empty() || name.len() > 15 {
        return Err("an interface name has 1 to 15 characters");
    }
    if name == "." || name == ".." {
        return Err("an interface name cannot be . or ..");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err("an interface name has only letters, digits, '-', '_' and '.'");
    }
    Ok(())
}

/// Sandbox ids name files: 1 to 128 letters, digits, `-`, `_` or `.`, not starting with `.`.
/// Pod UIDs qualify.
pub fn validate_id(id: &str) -> Result<()> {
    let invalid = |reason| {
        Err(Error::InvalidId {
            id: id.to_owned(),
            reason,
        })
    };
    if id.is_empty() || id.len() > 128 {
        return invalid("it must have 1 to 128 characters");
    }
    if id.starts_with('.') {
        return invalid("it must not start with '.'");
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return invalid("it may contain only letters, digits, '-', '_' and '.'");
    }
    Ok(())
}

/// The host-side veth name for `id`: `veth` and 8 hex digits of an FNV-1a hash (stable across
/// builds, unlike std's hasher). `salt` > 0 picks another name when two ids collide.
fn veth_name(id: &str, salt: u32) -> String {
    let salt = salt.to_be_bytes();
    let extra: &[u8] = if salt == [0; 4] { &[] } else { &salt };
    let mut hash: u32 = 0x811c_9dc5;
    for &b in id.as_bytes().iter().chain(extra) {
        hash ^= u32::from(b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    format!("veth{hash:08x}")
}

struct State {
    ipam: Ipam,
    records: BTreeMap<String, Record>,
}

/// Serializes operations on one sandbox id while letting different ids run concurrently.
#[derive(Default)]
struct IdLocks(Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

struct IdGuard<'a> {
    locks: &'a IdLocks,
    id: String,
    guard: Option<OwnedMutexGuard<()>>,
}

impl IdLocks {
    async fn lock(&self, id: &str) -> IdGuard<'_> {
        let lock = self.map().entry(id.to_owned()).or_default().clone();
        let guard = lock.lock_owned().await;
        IdGuard {
            locks: self,
            id: id.to_owned(),
            guard: Some(guard),
        }
    }

    fn map(&self) -> MutexGuard<'_, HashMap<String, Arc<tokio::sync::Mutex<()>>>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for IdGuard<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut map = self.locks.map();
        // Only the map holds it now: nobody waits for this id.
        if map
            .get(&self.id)
            .is_some_and(|lock| Arc::strong_count(lock) == 1)
        {
            map.remove(&self.id);
        }
    }
}

async fn blocking<T, E>(f: impl FnOnce() -> Result<T, E> + Send + 'static) -> Result<T>
where
    T: Send + 'static,
    E: Into<Error> + Send + 'static,
{
    tokio::task::spawn_blocking(f).await?.map_err(Into::into)
}

/// One node's pod network. See the crate docs for the design.
pub struct PodNetwork {
    cfg: BridgeConfig,
    gateway: Ipv4Addr,
    node: Netlink,
    store: Arc<Store>,
    state: Mutex<State>,
    ids: IdLocks,
}

impl PodNetwork {
    /// Takes the state directory's lock, creates the bridge if missing (MTU, gateway address,
    /// up), then reconciles what an earlier run left: recorded sandboxes whose namespace still
    /// exists are completed (or removed if that fails), the others removed and their addresses
    /// freed; namespace files and bridge ports that no record names are removed.
    pub async fn new(cfg: BridgeConfig) -> Result<PodNetwork> {
        cfg.validate()?;
        let ipam = Ipam::new(cfg.subnet)?;
        let gateway = ipam.gateway();
        let state_dir = cfg.state_dir.clone();
        let store = Arc::new(blocking(move || Store::open(&state_dir)).await?);
        let netns_dir = cfg.netns_dir.clone();
        blocking(move || netns::prepare_dir(&netns_dir)).await?;
        let node = Netlink::open(cfg.node_netns.as_deref()).await?;
        let net = PodNetwork {
            cfg,
            gateway,
            node,
            store,
            state: Mutex::new(State {
                ipam,
                records: BTreeMap::new(),
            }),
            ids: IdLocks::default(),
        };
        net.ensure_bridge().await?;
        net.reconcile().await?;
        Ok(net)
    }

    pub fn config(&self) -> &BridgeConfig {
        &self.cfg
    }

    /// The bridge's address, every pod's default gateway.
    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn sandbox(&self, record: &Record) -> Sandbox {
        Sandbox {
            id: record.id.clone(),
            netns: record.netns.clone(),
            ip: record.ip,
            gateway: self.gateway,
            prefix_len: self.cfg.subnet.prefix_len(),
            host_veth: record.host_veth.clone(),
        }
    }

    /// Creates the sandbox `id` (a pod UID): a namespace with `lo` up and `eth0`, a veth whose
    /// peer is a port of the bridge, an address from the subnet and a default route via the
    /// gateway. Idempotent: for a recorded id it completes whatever is missing and returns the
    /// same sandbox. If it fails for a new id, what it built is removed again. A setup that is
    /// cancelled midway leaves a record that the next `setup`, `teardown` or restart resolves.
    pub async fn setup(&self, id: &str) -> Result<Sandbox> {
        validate_id(id)?;
        let _guard = self.ids.lock(id).await;
        self.setup_locked(id).await.map_err(|e| Error::Sandbox {
            op: "setting up",
            id: id.to_owned(),
            source: Box::new(e),
        })
    }

    async fn setup_locked(&self, id: &str) -> Result<Sandbox> {
        let (record, fresh) = self.reserve(id)?;
        if fresh {
            let (store, saved) = (self.store.clone(), record.clone());
            let written = blocking(move || {
                store.save(&saved)?;
                if let Err(e) = store.save_last_reserved(saved.ip) {
                    warn!(error = %e, "could not save the round-robin position of pod addresses");
                }
                Ok::<_, store::Error>(())
            });
            if let Err(e) = written.await {
                self.forget(&record);
                return Err(e);
            }
        }
        if let Err(e) = self.build(&record).await {
            if fresh && let Err(undo) = self.remove(&record).await {
                warn!(id, error = %undo, "could not undo a failed sandbox setup");
            }
            return Err(e);
        }
        debug!(id, ip = %record.ip, "sandbox ready");
        Ok(self.sandbox(&record))
    }

    /// The record for `id`, and whether it was made just now (address allocated, not saved yet).
    fn reserve(&self, id: &str) -> Result<(Record, bool)> {
        let mut state = self.state();
        if let Some(record) = state.records.get(id) {
            return Ok((record.clone(), false));
        }
        let ip = state.ipam.allocate()?;
        let taken: HashSet<&str> = state
            .records
            .values()
            .map(|r| r.host_veth.as_str())
            .collect();
        let host_veth = (0..)
            .map(|salt| veth_name(id, salt))
            .find(|name| !taken.contains(name.as_str()))
            .unwrap_or_else(|| unreachable!("fewer records than veth names"));
        let record = Record {
            id: id.to_owned(),
            ip,
            host_veth,
            netns: self.cfg.netns_dir.join(id),
        };
        state.records.insert(id.to_owned(), record.clone());
        Ok((record, true))
    }

    /// Drops a record from memory and frees its address, if this record is the one held.
    fn forget(&self, record: &Record) {
        let mut state = self.state();
        if state.records.get(&record.id) == Some(record) {
            state.records.remove(&record.id);
            state.ipam.release(record.ip);
        }
    }

    async fn bridge(&self) -> Result<Link> {
        match self.node.link(&self.cfg.bridge).await? {
            Some(link) if link.kind == Some(InfoKind::Bridge) => Ok(link),
            Some(_) => Err(Error::ForeignLink {
                name: self.cfg.bridge.clone(),
                expected: "a bridge",
            }),
            None => Err(Error::BridgeMissing {
                name: self.cfg.bridge.clone(),
            }),
        }
    }

    async fn ensure_bridge(&self) -> Result<Link> {
        let name = &self.cfg.bridge;
        if self.node.link(name).await?.is_none() {
            self.node.add_bridge(name, self.cfg.mtu).await?;
            info!(bridge = %name, subnet = %self.cfg.subnet, "created the pod bridge");
        }
        let bridge = self.bridge().await?;
        let up = LinkChange {
            mtu: Some(self.cfg.mtu),
            master: None,
            up: true,
        };
        self.node.set_link(&bridge, up).await?;
        // The bridge's subnet addresses are exactly the gateway: an address from an earlier
        // pod CIDR would leave a stale connected route behind. Host addresses (/32, like the
        // cluster DNS address the node answers on) make no such route and stay.
        let prefix_len = self.cfg.subnet.prefix_len();
        let mut present = false;
        for (ip, len) in self.node.ipv4_addresses(&bridge).await? {
            if (ip, len) == (self.gateway, prefix_len) {
                present = true;
            } else if len == 32 {
                continue;
            } else {
                warn!(bridge = %name, address = %format!("{ip}/{len}"), "removing a stale bridge address");
                self.node.delete_address(&bridge, ip, len).await?;
            }
        }
        if !present {
            self.node
                .add_address(&bridge, self.gateway, prefix_len)
                .await?;
        }
        Ok(bridge)
    }

    /// Whether `link` can be a host-side veth of this pod network: a veth that is a port of
    /// the bridge, or of nothing (a setup interrupted before attaching it).
    fn is_ours(link: &Link, bridge: &Link) -> bool {
        link.kind == Some(InfoKind::Veth) && link.master.is_none_or(|m| m == bridge.index)
    }

    /// Brings the sandbox to its complete state; every step is idempotent.
    async fn build(&self, record: &Record) -> Result<()> {
        let mtu = self.cfg.mtu;
        let path = record.netns.clone();
        blocking(move || netns::create(&path)).await?;
        let pod = Netlink::open(Some(&record.netns)).await?;
        let bridge = self.bridge().await?;
        let host = self.node.link(&record.host_veth).await?;
        if let Some(host) = &host
            && !Self::is_ours(host, &bridge)
        {
            return Err(Error::ForeignLink {
                name: host.name.clone(),
                expected: "a pod veth",
            });
        }
        let eth0 = pod.link(POD_IFNAME).await?;
        let paired = match (&host, &eth0) {
            (Some(_), Some(_)) => true,
            // One end without the other: the namespace was replaced, or a crash came between
            // the two. Start the pair again.
            (Some(host), None) => {
                self.node.delete_link(host).await?;
                false
            }
            (None, Some(eth0)) => {
                pod.delete_link(eth0).await?;
                false
            }
            (None, None) => false,
        };
        if !paired {
            let ns = File::open(&record.netns).map_err(|source| netns::Error::Open {
                path: record.netns.clone(),
                source,
            })?;
            self.node
                .add_veth(&record.host_veth, POD_IFNAME, mtu, ns.as_fd())
                .await?;
        }
        let vanished = |name: &str| Error::LinkVanished {
            name: name.to_owned(),
        };
        let host = self
            .node
            .link(&record.host_veth)
            .await?
            .ok_or_else(|| vanished(&record.host_veth))?;
        let attach = LinkChange {
            mtu: Some(mtu),
            master: Some(bridge.index),
            up: true,
        };
        self.node.set_link(&host, attach).await?;
        self.node.set_bridge_port_hairpin(&host).await?;

        let lo = pod.link("lo").await?.ok_or_else(|| vanished("lo"))?;
        pod.set_link(
            &lo,
            LinkChange {
                up: true,
                ..LinkChange::default()
            },
        )
        .await?;
        let eth0 = pod
            .link(POD_IFNAME)
            .await?
            .ok_or_else(|| vanished(POD_IFNAME))?;
        pod.set_link(
            &eth0,
            LinkChange {
                mtu: Some(mtu),
                master: None,
                up: true,
            },
        )
        .await?;
        pod.add_address(&eth0, record.ip, self.cfg.subnet.prefix_len())
            .await?;
        pod.replace_default_route(&eth0, self.gateway).await?;
        Ok(())
    }

    /// Removes the host veth (unless another record claims its name, or it is not ours) and
    /// the namespace file of sandbox `id`.
    async fn remove_remnants(&self, id: &str, host_veth: &str, netns_path: &Path) -> Result<()> {
        let claimed = self
            .state()
            .records
            .values()
            .any(|r| r.id != id && r.host_veth == host_veth);
        if !claimed && let Some(link) = self.node.link(host_veth).await? {
            let bridge = self.bridge().await?;
            if Self::is_ours(&link, &bridge) {
                self.node.delete_link(&link).await?;
            } else {
                warn!(link = %host_veth, "not deleting a link that is not a pod veth of this bridge");
            }
        }
        let path = netns_path.to_owned();
        blocking(move || netns::remove(&path)).await
    }

    /// Tears a recorded sandbox down: links, namespace, then the record and the address.
    async fn remove(&self, record: &Record) -> Result<()> {
        self.remove_remnants(&record.id, &record.host_veth, &record.netns)
            .await?;
        let (store, id) = (self.store.clone(), record.id.clone());
        blocking(move || store.remove(&id)).await?;
        self.forget(record);
        Ok(())
    }

    /// Removes the sandbox `id`: its veth pair, its namespace file and mount, its record, and
    /// frees its address. Idempotent, and also cleans up after an unrecorded id. Processes still
    /// inside the namespace keep it alive, but without the veth it is cut off.
    pub async fn teardown(&self, id: &str) -> Result<()> {
        validate_id(id)?;
        let _guard = self.ids.lock(id).await;
        let recorded = self.state().records.get(id).cloned();
        let result = match recorded {
            Some(record) => self.remove(&record).await,
            None => {
                let netns = self.cfg.netns_dir.join(id);
                self.remove_remnants(id, &veth_name(id, 0), &netns).await
            }
        };
        result.map_err(|e| Error::Sandbox {
            op: "tearing down",
            id: id.to_owned(),
            source: Box::new(e),
        })
    }

    /// The recorded sandboxes, by id: after a restart, what to re-adopt or collect.
    pub fn sandboxes(&self) -> Result<Vec<Sandbox>> {
        Ok(self
            .state()
            .records
            .values()
            .map(|r| self.sandbox(r))
            .collect())
    }

    async fn reconcile(&self) -> Result<()> {
        let store = self.store.clone();
        let (records, unreadable) = blocking(move || store.load()).await?;
        let last = self.store.last_reserved();
        let mut unkept = Vec::new();
        {
            let mut state = self.state();
            if let Some(last) = last {
                state.ipam.set_last(last);
            }
            for record in records {
                let veth_taken = state
                    .records
                    .values()
                    .any(|r| r.host_veth == record.host_veth);
                if veth_taken {
                    unkept.push((
                        record,
                        "its host veth is recorded for another sandbox".to_owned(),
                    ));
                    continue;
                }
                match state.ipam.reserve(record.ip) {
                    Ok(()) => {
                        state.records.insert(record.id.clone(), record);
                    }
                    Err(e) => unkept.push((record, e.to_string())),
                }
            }
        }
        for (record, why) in unkept {
            warn!(id = %record.id, why = %why, "removing a sandbox whose record cannot be kept");
            self.remove_remnants(&record.id, &record.host_veth, &record.netns)
                .await?;
            let (store, id) = (self.store.clone(), record.id.clone());
            blocking(move || store.remove(&id)).await?;
        }
        for bad in unreadable {
            warn!(id = %bad.id, problem = %bad.problem, "removing a sandbox whose record is unreadable");
            let netns = self.cfg.netns_dir.join(&bad.id);
            self.remove_remnants(&bad.id, &veth_name(&bad.id, 0), &netns)
                .await?;
            let store = self.store.clone();
            blocking(move || store.remove(&bad.id)).await?;
        }

        let recorded: Vec<Record> = self.state().records.values().cloned().collect();
        for record in recorded {
            if !netns::is_netns(&record.netns) {
                info!(id = %record.id, ip = %record.ip, "sandbox namespace is gone; freeing its address");
                self.remove(&record).await?;
            } else if let Err(e) = self.build(&record).await {
                warn!(id = %record.id, error = %e, "could not complete a sandbox; removing it");
                self.remove(&record).await?;
            }
        }
        self.remove_orphans().await
    }

    /// Removes namespace files and bridge ports that no record names.
    async fn remove_orphans(&self) -> Result<()> {
        let (paths, veths): (HashSet<PathBuf>, HashSet<String>) = {
            let state = self.state();
            let records = state.records.values();
            (
                records.clone().map(|r| r.netns.clone()).collect(),
                records.map(|r| r.host_veth.clone()).collect(),
            )
        };
        let dir = self.cfg.netns_dir.clone();
        let removed = blocking(move || -> Result<Vec<PathBuf>> {
            let mut removed = Vec::new();
            let list_err = |source| netns::Error::Dir {
                path: dir.clone(),
                what: "listing it",
                source,
            };
            for entry in std::fs::read_dir(&dir).map_err(list_err)? {
                let path = entry.map_err(list_err)?.path();
                if !paths.contains(&path) {
                    netns::remove(&path)?;
                    removed.push(path);
                }
            }
            Ok(removed)
        })
        .await?;
        for path in removed {
            warn!(netns = %path.display(), "removed a pod network namespace that no record names");
        }
        let bridge = self.bridge().await?;
        for link in self.node.links().await? {
            let port = link.master == Some(bridge.index) && link.kind == Some(InfoKind::Veth);
            if port && !veths.contains(&link.name) {
                warn!(link = %link.name, "removing a bridge port that no record names");
                self.node.delete_link(&link).await?;
            }
        }
        Ok(())
    }

    /// Tears every sandbox down, deletes the bridge and unmounts the namespace directory: for
    /// tests and `skiff cluster down`. Carries on past a failing sandbox and reports the first
    /// error at the end.
    pub async fn destroy(self) -> Result<()> {
        let recorded: Vec<Record> = self.state().records.values().cloned().collect();
        let mut first_error = None;
        for record in recorded {
            if let Err(e) = self.remove(&record).await {
                let e = Error::Sandbox {
                    op: "tearing down",
                    id: record.id.clone(),
                    source: Box::new(e),
                };
                first_error.get_or_insert(e);
            }
        }
        if let Err(e) = self.remove_orphans().await {
            first_error.get_or_insert(e);
        }
        match self.bridge().await {
            Ok(bridge) => {
                if let Err(e) = self.node.delete_link(&bridge).await {
                    first_error.get_or_insert(e.into());
                }
            }
            Err(Error::BridgeMissing { .. }) => {}
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
        let dir = self.cfg.netns_dir.clone();
        if let Err(e) = blocking(move || netns::release_dir(&dir)).await {
            first_error.get_or_insert(e);
        }
        first_error.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_names_are_short_stable_and_salted() {
        let name = veth_name("0b6c1a52-54c5-4d43-9a39-1f2a6f0e7a10", 0);
        assert_eq!(name.len(), 12);
        assert!(validate_ifname(&name).is_ok());
        assert_eq!(name, veth_name("0b6c1a52-54c5-4d43-9a39-1f2a6f0e7a10", 0));
        assert_ne!(name, veth_name("0b6c1a52-54c5-4d43-9a39-1f2a6f0e7a10", 1));
        assert_ne!(name, veth_name("0b6c1a52-54c5-4d43-9a39-1f2a6f0e7a11", 0));
        // FNV-1a 32 of "a" is 0xe40c292c: the hash must not change between builds.
        assert_eq!(veth_name("a", 0), "vethe40c292c");
    }

    #[test]
    fn ids_and_interface_names_are_checked() {
        for ok in ["0b6c1a52-54c5-4d43-9a39-1f2a6f0e7a10", "a", "pod_1.x"] {
            assert!(validate_id(ok).is_ok(), "{ok}");
        }
        let long = "x".repeat(129);
        for bad in [
            "",
            ".hidden",
            "..",
            "a/b",
            "../x",
            "a b",
            "ä",
            long.as_str(),
        ] {
            assert!(
                matches!(validate_id(bad), Err(Error::InvalidId { .. })),
                "{bad:?}"
            );
        }
        for ok in ["skiff0", "br-pods.1", "a23456789012345"] {
            assert!(validate_ifname(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a1234567890123456",
            "sk iff",
            "sk/iff",
            "sk:0",
        ] {
            assert!(validate_ifname(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn configs_are_validated_with_clear_messages() {
        let base = BridgeConfig::new(
            "10.42.0.0/24".parse().unwrap(),
            "/var/lib/s/net",
            "/run/s/netns",
        );
        assert!(base.validate().is_ok());
        let cases: Vec<(BridgeConfig, &str)> = vec![
            (
                BridgeConfig {
                    bridge: "skiff-bridge-too-long".into(),
                    ..base.clone()
                },
                "invalid pod network config: bridge \"skiff-bridge-too-long\": an interface name has 1 to 15 characters",
            ),
            (
                BridgeConfig {
                    mtu: 20,
                    ..base.clone()
                },
                "invalid pod network config: mtu \"20\": must be between 68 and 65535",
            ),
            (
                BridgeConfig {
                    state_dir: "rel/state".into(),
                    ..base.clone()
                },
                "invalid pod network config: state_dir \"rel/state\": must be an absolute path",
            ),
            (
                BridgeConfig {
                    netns_dir: "/var/lib/s/net/ns".into(),
                    ..base.clone()
                },
                "invalid pod network config: netns_dir \"/var/lib/s/net/ns\": must not overlap state_dir",
            ),
        ];
        for (cfg, want) in cases {
            assert_eq!(cfg.validate().unwrap_err().to_string(), want);
        }
    }
}
