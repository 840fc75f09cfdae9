//! skiff's service proxy (kube-proxy's nftables mode): turns Services and EndpointSlices into
//! nftables rules in the network namespace it runs in.
//!
//! The pipeline is three pure steps and one side effect:
//! `model::desired` (Services, EndpointSlices, node name → one `ServicePort` each with its
//! usable endpoints) → `rules::render` (→ a `Ruleset`: chains, sets, map elements as nft text)
//! → `rules::diff` against what is programmed (→ one transaction with only the differences) →
//! `nft -f -`. The first sync, and any sync after nft refused a transaction, rebuilds the table
//! whole (`rules::full`, atomically replacing it).
//!
//! hostPorts of the node's own pods (the CNI `portmap` plugin's role) are rendered into the
//! same table from a watch of the Pods bound to the node (`hostport`).
//!
//! Everything lives in one table (`ip skiff-proxy` by default) and nothing else is touched.
//! Only packets marked by its own rules are masqueraded. Stopping leaves the rules in place,
//! so a restarting agent does not interrupt Service traffic; `cleanup` removes them.

pub mod bench;
pub mod hostport;
pub mod metrics;
pub mod model;
pub mod nft;
pub mod rules;
mod sync;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use metrics::{Metrics, Snapshot, Summary};
pub use nft::Nft;
pub use rules::Ipv4Cidr;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid nftables table name {table:?}: use letters, digits, '-' and '_'")]
    InvalidTable { table: String },
    #[error("the proxy needs the node's name")]
    NoNodeName,
    #[error(transparent)]
    Nft(#[from] nft::Error),
    #[error("the {kind} watch ended")]
    WatchEnded { kind: &'static str },
}

/// Upstream kube-proxy's masquerade mark bit.
pub const DEFAULT_MARK: u32 = 0x4000;
pub const DEFAULT_TABLE: &str = "skiff-proxy";

#[derive(Clone, Debug)]
pub struct Config {
    /// This node: endpoints whose `nodeName` equals it are local (Local traffic policies).
    pub node_name: String,
    /// The `ip` family table the proxy owns.
    pub table: String,
    /// Least time between two transactions; changes arriving meanwhile are coalesced.
    pub sync_min_interval: Duration,
    /// The table is rebuilt whole this often, repairing outside changes.
    pub full_sync_interval: Duration,
    /// The cluster's pod CIDR (`--cluster-cidr`): clients outside it reaching a cluster IP are
    /// masqueraded, and pods reaching external IPs of Local services use all endpoints. Without
    /// it neither happens.
    pub cluster_cidr: Option<Ipv4Cidr>,
    /// The packet mark bit the proxy's rules set on traffic to masquerade.
    pub masquerade_mark: u32,
    /// How nft is run (the current network namespace by default).
    pub nft: Nft,
    /// Where sync times and latencies are recorded.
    pub metrics: Arc<Metrics>,
}

impl Config {
    pub fn new(node_name: impl Into<String>) -> Config {
        Config {
            node_name: node_name.into(),
            table: DEFAULT_TABLE.into(),
            sync_min_interval: Duration::from_millis(20),
            full_sync_interval: Duration::from_secs(3600),
            cluster_cidr: None,
            masquerade_mark: DEFAULT_MARK,
            nft: Nft::default(),
            metrics: Arc::default(),
        }
    }

    fn settings(&self) -> rules::Settings {
        rules::Settings {
            table: self.table.clone(),
            cluster_cidr: self.cluster_cidr,
            mark: self.masquerade_mark,
        }
    }
}

/// Runs the proxy until `shutdown`: watches Services and EndpointSlices through `client` and
/// keeps the table in step. Fails only on a bad configuration or a watch that ends; a
/// transaction nft refuses is logged, counted and followed by a full rebuild with backoff.
pub async fn run(client: kube::Client, cfg: Config, shutdown: CancellationToken) -> Result<()> {
    if !rules::valid_table_name(&cfg.table) {
        return Err(Error::InvalidTable { table: cfg.table });
    }
    if cfg.node_name.is_empty() {
        return Err(Error::NoNodeName);
    }
    sync::run(client, cfg, shutdown).await
}

/// Deletes the proxy's table (`ip TABLE`) from the current network namespace, if present.
pub fn cleanup(table: &str) -> Result<()> {
    sync::cleanup(&Nft::default(), table)
}

/// `cleanup` with nft started another way (e.g. `Nft::in_netns`).
pub fn cleanup_with(nft: &Nft, table: &str) -> Result<()> {
    sync::cleanup(nft, table)
}
