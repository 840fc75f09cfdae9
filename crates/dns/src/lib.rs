//! Cluster DNS: the CoreDNS `kubernetes` plugin role, served from watched Services and EndpointSlices.
//!
//! `start` watches Namespaces, Services and EndpointSlices through the API (`control::informer`),
//! keeps the records in an [`Index`] updated one object at a time, and serves them with
//! hickory-server over UDP and TCP on each listen address. Questions are answered from memory,
//! never by waiting on the API. Names in the cluster zone are answered authoritatively with
//! `ttl` (5 s by default, like CoreDNS); negative answers carry the zone's SOA. Names outside it
//! (and reverse names of addresses the cluster does not know) go to the configured upstreams,
//! or are REFUSED when there are none: CoreDNS without a `forward` plugin answers a name no
//! server block serves with REFUSED, and REFUSED tells a stub resolver to try its next server
//! rather than caching a denial. Nothing is ever sent to an address not in `upstream`.
//!
//! UDP answers larger than the client's EDNS buffer (512 bytes without EDNS, at most 4096) are
//! truncated with the TC bit so the client retries over TCP. A malformed message gets FORMERR
//! (or nothing, when not even a header can be read); a message with other than one question
//! gets FORMERR.
//!
//! hickory-server logs every request at INFO under the `hickory_server` target: a process that
//! logs at INFO should filter it (`info,hickory_server=warn`), or each query costs two lines.

mod forward;
pub mod index;
mod server;
mod watch;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use control::informer::Informers;
use hickory_proto::rr::Name;
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use index::{Index, Lookup};

/// How long a TCP connection may sit idle between queries.
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Responses queued per TCP connection.
const TCP_RESPONSE_BUFFER: usize = 32;
/// Tries at finding a port free for both UDP and TCP when asked for port 0.
const BIND_ATTEMPTS: usize = 16;

#[derive(Debug, Clone)]
pub struct Config {
    /// Addresses to serve on, UDP and TCP on each (port 0: one free port for both).
    pub listen: Vec<SocketAddr>,
    /// The cluster zone, e.g. `cluster.local`.
    pub domain: String,
    /// Servers for names outside the cluster zone, tried in order; none: such names are
    /// REFUSED.
    pub upstream: Vec<SocketAddr>,
    /// TTL of the cluster's records, in seconds; also the negative-caching TTL.
    pub ttl: u32,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            listen: vec![(Ipv4Addr::new(10, 43, 0, 10), 53).into()],
            domain: "cluster.local".to_string(),
            upstream: Vec::new(),
            ttl: 5,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cluster DNS has no listen address")]
    NoListenAddress,
    #[error("invalid cluster domain {domain:?}: {source}")]
    Domain {
        domain: String,
        #[source]
        source: hickory_proto::ProtoError,
    },
    #[error("binding DNS {proto} on {addr}: {source}")]
    Bind {
        proto: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("serving DNS: {0}")]
    Serve(#[source] hickory_server::net::NetError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A serving cluster DNS.
pub struct Running {
    addrs: Vec<SocketAddr>,
    sync: Arc<watch::Listed>,
    index: Arc<RwLock<Index>>,
    server: hickory_server::Server<server::Handler>,
    tracker: TaskTracker,
    stop: CancellationToken,
    shutdown: CancellationToken,
}

impl Running {
    /// The bound addresses (UDP and TCP share each), in `Config::listen`'s order.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The live index (for inspection; the watches own its updates).
    pub fn index(&self) -> &Arc<RwLock<Index>> {
        &self.index
    }

    /// Waits until every watch has listed once; until then names the index does not know are
    /// answered SERVFAIL rather than NXDOMAIN.
    pub async fn synced(&self) {
        loop {
            let notified = self.sync.notify.notified();
            if self.sync.is_synced() {
                return;
            }
            notified.await;
        }
    }

    /// Serves until the `shutdown` token given to `start` is cancelled, then stops the watches
    /// and the listeners and waits for them. A listener that fails (its socket gone) ends the
    /// server with that error.
    pub async fn wait(mut self) -> Result<()> {
        let failed = tokio::select! {
            _ = self.shutdown.cancelled() => None,
            ended = self.server.block_until_done() => Some(ended),
        };
        match failed {
            None => self.stop().await,
            Some(ended) => {
                // The listeners are done already; stop the rest.
                self.server.shutdown_token().cancel();
                self.stop.cancel();
                self.tracker.close();
                self.tracker.wait().await;
                ended.map_err(Error::Serve)
            }
        }
    }

    /// Stops now: no new queries, the watches end, in-flight answers are awaited.
    pub async fn stop(&mut self) -> Result<()> {
        self.stop.cancel();
        let served = self.server.shutdown_gracefully().await;
        self.tracker.close();
        self.tracker.wait().await;
        served.map_err(Error::Serve)
    }
}

/// Starts serving: binds every listen address (UDP and TCP), starts the watches and returns
/// at once; answers come from the index as the watches fill it.
pub async fn start(
    client: kube::Client,
    cfg: Config,
    shutdown: CancellationToken,
) -> Result<Running> {
    // Private informers: they stop with this server.
    start_inner(&Informers::default(), None, client, cfg, shutdown).await
}

/// `start`, subscribing to `informers` (shared with the agent's other API clients, e.g. the
/// service proxy, so each kind is watched once per process). Informers not yet started are
/// started with `shutdown`, so they outlive this server if it stops first.
pub async fn start_with(
    informers: &Informers,
    client: kube::Client,
    cfg: Config,
    shutdown: CancellationToken,
) -> Result<Running> {
    let informers_shutdown = shutdown.clone();
    start_inner(informers, Some(informers_shutdown), client, cfg, shutdown).await
}

/// `informers_shutdown`: what stops informers this call starts (`None`: this server's stop).
async fn start_inner(
    informers: &Informers,
    informers_shutdown: Option<CancellationToken>,
    client: kube::Client,
    cfg: Config,
    shutdown: CancellationToken,
) -> Result<Running> {
    if cfg.listen.is_empty() {
        return Err(Error::NoListenAddress);
    }
    let zone =
        Name::from_ascii(cfg.domain.trim_end_matches('.')).map_err(|source| Error::Domain {
            domain: cfg.domain.clone(),
            source,
        })?;
    let mut sockets = Vec::with_capacity(cfg.listen.len());
    for addr in &cfg.listen {
        sockets.push(bind(*addr).await?);
    }
    let addrs: Vec<SocketAddr> = sockets
        .iter()
        .map(|(udp, _)| udp.local_addr())
        .collect::<std::io::Result<_>>()
        .map_err(|source| Error::Bind {
            proto: "UDP",
            addr: cfg.listen[0],
            source,
        })?;
    let ns_addrs: Vec<IpAddr> = addrs
        .iter()
        .map(SocketAddr::ip)
        .filter(|ip| !ip.is_unspecified())
        .collect();
    let index = Arc::new(RwLock::new(Index::new(&zone, cfg.ttl, ns_addrs)));
    let sync = Arc::new(watch::Listed::new());
    let stop = shutdown.child_token();
    let tracker = TaskTracker::new();
    let informers_shutdown = informers_shutdown.unwrap_or_else(|| stop.clone());
    watch::start(
        informers,
        &informers_shutdown,
        &client,
        &index,
        &sync,
        &tracker,
        &stop,
    );

    let handler = server::Handler {
        index: index.clone(),
        synced: sync.synced.clone(),
        forwarder: (!cfg.upstream.is_empty()).then(|| forward::Forwarder::new(cfg.upstream)),
    };
    let mut server = hickory_server::Server::new(handler);
    for (udp, tcp) in sockets {
        server.register_socket(udp);
        server.register_listener(tcp, TCP_IDLE_TIMEOUT, TCP_RESPONSE_BUFFER);
    }
    Ok(Running {
        addrs,
        sync,
        index,
        server,
        tracker,
        stop,
        shutdown,
    })
}

/// Serves until `shutdown` is cancelled.
pub async fn run(client: kube::Client, cfg: Config, shutdown: CancellationToken) -> Result<()> {
    start(client, cfg, shutdown).await?.wait().await
}

/// A UDP socket and a TCP listener on the same address; for port 0, on one free port.
async fn bind(addr: SocketAddr) -> Result<(UdpSocket, TcpListener)> {
    let udp_err = |source| Error::Bind {
        proto: "UDP",
        addr,
        source,
    };
    let tcp_err = |source| Error::Bind {
        proto: "TCP",
        addr,
        source,
    };
    if addr.port() != 0 {
        let udp = UdpSocket::bind(addr).await.map_err(udp_err)?;
        let tcp = TcpListener::bind(addr).await.map_err(tcp_err)?;
        return Ok((udp, tcp));
    }
    let mut last = None;
    for _ in 0..BIND_ATTEMPTS {
        let udp = UdpSocket::bind(addr).await.map_err(udp_err)?;
        let port = udp.local_addr().map_err(udp_err)?.port();
        match TcpListener::bind(SocketAddr::new(addr.ip(), port)).await {
            Ok(tcp) => return Ok((udp, tcp)),
            // Taken for TCP only: try another UDP port.
            Err(e) => last = Some(e),
        }
    }
    Err(tcp_err(last.unwrap_or_else(|| {
        std::io::Error::other("no port free for both UDP and TCP")
    })))
}

impl Drop for Running {
    /// A dropped server stops its watches (hickory's listener tasks end with it).
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
