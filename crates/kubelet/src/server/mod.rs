//! The kubelet's HTTPS API: what the API server proxies `kubectl logs`, `exec`, `attach`,
//! `port-forward` (and so `kubectl cp`) and the resource metrics behind `kubectl top` to. This
//! module owns the wire protocols end to end; what actually runs in a pod is behind the
//! [`PodStreams`] trait, which the node agent implements.
//!
//! # Endpoints (paths as upstream's kubelet serves them)
//! | path | what |
//! |---|---|
//! | `GET /containerLogs/{ns}/{pod}/{container}` | `follow`, `previous`, `sinceSeconds`, `sinceTime`, `timestamps`, `tailLines`, `limitBytes` |
//! | `GET\|POST /exec/{ns}/{pod}[/{uid}]/{container}` | `command` (repeated), `stdin`, `stdout`, `stderr`, `tty` (each `1`/`true`) |
//! | `GET\|POST /attach/{ns}/{pod}[/{uid}]/{container}` | `stdin`, `stdout`, `stderr`, `tty` |
//! | `GET\|POST /portForward/{ns}/{pod}[/{uid}]` | ports come per stream (SPDY `port` header) |
//! | `GET /stats/summary` | the Summary API subset metrics need (node, pod and container CPU and memory) |
//! | `GET /healthz` | `ok` |
//!
//! Exec and attach speak WebSocket (`v5.channel.k8s.io`, `v4.channel.k8s.io`,
//! `v3.channel.k8s.io`, `v2.channel.k8s.io`, `channel.k8s.io`, and the `base64.` variants) and
//! SPDY/3.1 (`X-Stream-Protocol-Version: v4.channel.k8s.io` … `channel.k8s.io`).
//! Port-forward speaks SPDY/3.1 (`portforward.k8s.io`), either on the upgraded connection or
//! tunnelled inside WebSocket binary messages (subprotocol `SPDY/3.1+portforward.k8s.io`, what
//! kubectl ≥ 1.31 sends). The API server relays upgraded connections byte for byte, so kubectl
//! talks these protocols to this server directly.
//!
//! # Security
//! Every request must present a client certificate signed by the cluster CA
//! ([`KubeletTls::client_ca_pem`], which the agent has from joining); the API server presents
//! one issued for `kube-apiserver-kubelet-client` (group `system:masters`). There is no
//! authorization beyond that: whoever holds a CA-signed client certificate is trusted, as
//! upstream's kubelet with webhook authorization off. The serving certificate may be
//! self-signed ([`self_signed_serving_cert`]): like upstream's API server without
//! `--kubelet-certificate-authority`, skiff's API server does not verify it.
//!
//! # Contract for implementors of [`PodStreams`]
//! - Every method answers quickly (it starts things; it does not wait for them to finish).
//!   Errors returned before any byte is streamed become HTTP answers: `NotFound` → 404,
//!   `BadRequest` → 400, `Internal` → 500, with the message as the body.
//! - **logs**: return the bytes the user sees. The implementation applies `previous`, `since`,
//!   `tail_lines` and `timestamps` (upstream format: the line prefixed with its RFC 3339
//!   timestamp with nanoseconds and a space, `2024-01-02T03:04:05.123456789Z hello`). With
//!   `follow`, the stream stays open and yields new output as it is written until the container
//!   has exited and everything was sent; without it the stream ends at the current end of the
//!   log. `limit_bytes` is enforced by this server (implementations may stop early too). The
//!   stream is dropped when the client goes away. Upstream's messages for the usual errors:
//!   `previous terminated container "c" in pod "p" not found` (BadRequest), `container "c" in
//!   pod "p" is waiting to start: ContainerCreating` (BadRequest).
//! - **exec**: start `command` in the container with the requested streams and return at once.
//!   `stdin` is `Some` iff requested: the server writes the client's bytes into it and shuts it
//!   down when the client closes its stdin (or goes away). `stdout`/`stderr` are `Some` iff
//!   requested (with `tty`, everything comes on `stdout` and `stderr` is never requested);
//!   the server reads them until EOF. `resize` is `Some` for a tty: the server forwards the
//!   client's terminal sizes. The first size arrives only after the client connected, i.e.
//!   after `exec` returned: hold the process back until it is applied (bounded, say 1 s;
//!   `kubectl exec -it -- stty size` must not print `0 0`), then apply later ones. `exit`
//!   resolves when the process has exited; the server then keeps copying stdout/stderr until
//!   EOF, at most [`OUTPUT_DRAIN_AFTER_EXIT`] longer (a grandchild holding the pipe open must
//!   not hold the session), sends the status and closes. `ExitStatus::Exited(0)` is success,
//!   another code gives the client `NonZeroExitCode` (kubectl exits with that code),
//!   `ExitStatus::Failed(msg)` an error (for example `executable file not found`); a command
//!   that cannot start at all may also be an `Err` from `exec` itself. Dropping the
//!   `Session` (the client went away) should not leave anything behind that the process did
//!   not start itself: close its stdin; killing it is the implementation's choice (upstream
//!   lets it run).
//! - **attach**: like exec, for the container's main process: `stdin` writes to the
//!   container's stdin (only if the container has `stdin: true`; otherwise `BadRequest`),
//!   `stdout`/`stderr` stream its output from now on. `exit` resolves when the container
//!   exits (report its exit code) — dropping the session detaches without affecting the
//!   container.
//! - **port_forward**: connect to `port` on the pod's loopback (inside its network namespace)
//!   and return the connection; called once per forwarded client connection. Shut down the
//!   write side when the client closes its side; the server half-closes correspondingly. The
//!   error's message reaches the user as
//!   `error forwarding port {port} to pod {pod}, uid {uid}: {message}`.
//! - **stats**: cumulative CPU time (nanoseconds since the cgroup was created) and the memory
//!   working set (usage minus inactive file pages, as cAdvisor computes it) of the node and of
//!   every running pod and container, each with the time it was read. The API server derives
//!   CPU rates from two samples, so the counters must be monotonic for a given container.

mod http;
mod portforward;
mod remotecommand;
pub mod spdy;
mod stats;
mod tls;
pub mod ws;

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use tls::{KubeletTls, ServingCert, self_signed_serving_cert};

/// How long the server keeps reading a session's stdout and stderr after its process exited.
pub const OUTPUT_DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);

/// What a node agent provides to the kubelet API: the running pods' streams and statistics.
/// See the module documentation for the contract of each method.
pub trait PodStreams: Send + Sync + 'static {
    /// A container's log as the user sees it (options already applied, except `limit_bytes`,
    /// which the server enforces).
    fn logs(&self, req: LogRequest) -> BoxFuture<'_, Result<LogStream, StreamError>>;

    /// Runs a command in a running container.
    fn exec(&self, req: ExecRequest) -> BoxFuture<'_, Result<Session, StreamError>>;

    /// Attaches to a running container's main process.
    fn attach(&self, req: AttachRequest) -> BoxFuture<'_, Result<Session, StreamError>>;

    /// A connection to `port` on the pod's loopback, in the pod's network namespace.
    fn port_forward(
        &self,
        req: PortForwardRequest,
    ) -> BoxFuture<'_, Result<Box<dyn AsyncReadWrite>, StreamError>>;

    /// CPU and memory of the node and of every running pod and container.
    fn stats(&self) -> BoxFuture<'_, Result<NodeStats, StreamError>>;
}

/// A byte stream of log output.
pub type LogStream = BoxStream<'static, io::Result<Bytes>>;

/// A readable end (a process's stdout or stderr).
pub type Reader = Pin<Box<dyn AsyncRead + Send + 'static>>;

/// A writable end (a process's stdin).
pub type Writer = Pin<Box<dyn AsyncWrite + Send + 'static>>;

/// A bidirectional byte stream (a forwarded TCP connection).
pub trait AsyncReadWrite: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> AsyncReadWrite for T {}

/// Names a container: namespace, pod, the pod's UID when the caller gave one (upstream's
/// `/exec/{ns}/{pod}/{uid}/{container}` form; check it against the running pod when present),
/// and the container's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerRef {
    pub namespace: String,
    pub pod: String,
    pub uid: Option<String>,
    pub container: String,
}

impl fmt::Display for ContainerRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.namespace, self.pod, self.container)
    }
}

/// `GET /containerLogs/...`: which log and how much of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRequest {
    pub container: ContainerRef,
    /// Keep streaming new output until the container exits.
    pub follow: bool,
    /// The previous (terminated) instance of the container instead of the current one.
    pub previous: bool,
    /// Only lines written at or after this time (`sinceSeconds` is turned into a time by the
    /// server; `sinceTime` is passed as given).
    pub since: Option<jiff::Timestamp>,
    /// Prefix each line with its RFC 3339 timestamp (nanoseconds) and a space.
    pub timestamps: bool,
    /// Only the last N lines of the log (then filtered by `since`, as upstream's kubelet does).
    pub tail_lines: Option<u64>,
    /// At most this many bytes; the server cuts the stream there.
    pub limit_bytes: Option<u64>,
}

/// Which standard streams a session carries, and whether stdout is a terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StreamFlags {
    pub stdin: bool,
    pub stdout: bool,
    /// Never set together with `tty` (a terminal merges stderr into stdout).
    pub stderr: bool,
    pub tty: bool,
}

/// `/exec/...`: run `command` in a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecRequest {
    pub container: ContainerRef,
    /// Never empty.
    pub command: Vec<String>,
    pub streams: StreamFlags,
}

/// `/attach/...`: attach to a container's main process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachRequest {
    pub container: ContainerRef,
    pub streams: StreamFlags,
}

/// `/portForward/...`: one forwarded connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortForwardRequest {
    pub namespace: String,
    pub pod: String,
    pub uid: Option<String>,
    pub port: u16,
}

/// A terminal size, as kubectl sends it on the resize stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TerminalSize {
    pub width: u16,
    pub height: u16,
}

/// How a session's process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitStatus {
    /// It exited with this code (128 + N when killed by signal N, as runtimes report it).
    Exited(i32),
    /// It could not run or its end is unknown; the message reaches the user.
    Failed(String),
}

/// A started exec or attach session: the process's standard streams, a way to resize its
/// terminal, and its end. Which streams are `Some` follows the request's [`StreamFlags`].
pub struct Session {
    pub stdin: Option<Writer>,
    pub stdout: Option<Reader>,
    pub stderr: Option<Reader>,
    /// For a tty: where terminal sizes go.
    pub resize: Option<mpsc::Sender<TerminalSize>>,
    /// Resolves when the process (exec) or the container (attach) has ended.
    pub exit: BoxFuture<'static, ExitStatus>,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("stdin", &self.stdin.is_some())
            .field("stdout", &self.stdout.is_some())
            .field("stderr", &self.stderr.is_some())
            .field("resize", &self.resize.is_some())
            .finish_non_exhaustive()
    }
}

/// Why a stream could not be opened. The message is shown to the user as it is.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum StreamError {
    /// The pod or container does not exist (on this node). HTTP 404.
    #[error("{0}")]
    NotFound(String),
    /// The request cannot be served as asked (container not running, no previous instance,
    /// stdin not enabled, bad port). HTTP 400.
    #[error("{0}")]
    BadRequest(String),
    /// Something failed on the node. HTTP 500.
    #[error("{0}")]
    Internal(String),
}

/// One reading of cumulative CPU time and the memory working set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// When it was read.
    pub time: jiff::Timestamp,
    /// CPU time used since the cgroup was created, in nanoseconds (cpuacct.usage,
    /// cpu.stat usage_usec × 1000).
    pub cpu_usage_core_nanoseconds: u64,
    /// Memory usage minus inactive file pages, in bytes.
    pub memory_working_set_bytes: u64,
}

/// A container's usage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerStats {
    pub name: String,
    pub usage: Usage,
}

/// A running pod's usage: the pod cgroup as a whole and each running container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodStats {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub usage: Usage,
    pub containers: Vec<ContainerStats>,
}

/// What `stats` returns: the node (the whole machine, or the agent's cgroup limits) and its
/// running pods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStats {
    pub node_name: String,
    pub node: Usage,
    pub pods: Vec<PodStats>,
}

/// Why the kubelet server could not start or keep serving.
#[derive(Debug, Error)]
pub enum ServerError {
    #[error("kubelet server TLS: {0}")]
    Tls(String),
    #[error("kubelet server: {0}")]
    Io(#[from] io::Error),
}

/// How long open connections and sessions get to finish after `shutdown`.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Serves the kubelet API on `listener` (bound by the caller, who reports its port as
/// `status.daemonEndpoints.kubeletEndpoint.Port`) until `shutdown` is cancelled; then stops
/// accepting, ends open sessions and returns. Fails at once if the TLS material is unusable.
pub async fn serve(
    listener: TcpListener,
    tls: KubeletTls,
    streams: Arc<dyn PodStreams>,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls::server_config(&tls)?);
    let connections = TaskTracker::new();
    let sessions = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!("kubelet server: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let (acceptor, streams, sessions, shutdown) = (
            acceptor.clone(),
            streams.clone(),
            sessions.clone(),
            shutdown.clone(),
        );
        connections.spawn(async move {
            let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream))
                .await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, "kubelet server: TLS handshake failed: {e}");
                    return;
                }
                Err(_) => return,
            };
            let svc_shutdown = shutdown.clone();
            let svc = hyper::service::service_fn(move |req| {
                let (streams, sessions, shutdown) =
                    (streams.clone(), sessions.clone(), svc_shutdown.clone());
                async move {
                    Ok::<_, std::convert::Infallible>(
                        http::handle(req, streams, sessions, shutdown).await,
                    )
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                .with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(%peer, "kubelet server: connection: {e}");
                    }
                }
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(SHUTDOWN_GRACE, conn).await;
                }
            }
        });
    }
    connections.close();
    sessions.close();
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
        connections.wait().await;
        sessions.wait().await;
    })
    .await;
    Ok(())
}
