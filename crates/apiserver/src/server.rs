//! The API server: its configuration, start-up (store, credentials, built-in namespaces,
//! listener) and the top-level router.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use http::{Method, Response};
use serde_json::json;
use store::Store;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::auth::{self, Authorizer, Decision, UserInfo};
use crate::error::ApiError;
use crate::http::{Body, Req};
use crate::pki::Pki;
use crate::resources::Resources;

/// How to run an API server.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub bind: SocketAddr,
    /// Where to write the admin kubeconfig (default `<data-dir>/kubeconfig.yaml`).
    pub kubeconfig: Option<PathBuf>,
    /// Extra names/addresses for the serving certificate.
    pub tls_sans: Vec<String>,
    pub store: store::Options,
    /// `tolerationSeconds` of the not-ready/unreachable tolerations DefaultTolerationSeconds
    /// admission adds to pods (upstream `--default-not-ready-toleration-seconds`, 300).
    pub default_toleration_seconds: i64,
    /// The same for the unreachable toleration (upstream
    /// `--default-unreachable-toleration-seconds`, 300).
    pub default_unreachable_toleration_seconds: i64,
    /// Where Services get their cluster IPs and node ports, and the cluster DNS address.
    pub services: crate::service_alloc::Ranges,
    /// The address the `kubernetes` Service's endpoints point at (upstream
    /// `--advertise-address`); default: the bind address, or 127.0.0.1 when that is
    /// unspecified.
    pub advertise_address: Option<IpAddr>,
}

/// What a started server exposes to its owner.
pub struct Running {
    pub server: Arc<ApiServer>,
    pub addr: SocketAddr,
    pub kubeconfig: PathBuf,
    pub token: String,
    pub ready_after: std::time::Duration,
    task: tokio::task::JoinHandle<()>,
    shutdown: CancellationToken,
}

impl Running {
    /// Stops accepting, drains connections, then closes the store.
    pub async fn shutdown(self) -> Result<()> {
        self.shutdown.cancel();
        let _ = self.task.await;
        self.server
            .store
            .close()
            .await
            .context("closing the store")?;
        Ok(())
    }
}

pub struct ApiServer {
    pub store: Arc<dyn Store>,
    pub resources: Resources,
    pub authorizer: Box<dyn Authorizer>,
    pub token: String,
    /// The cluster CA certificate (PEM), served at `/cacerts`.
    pub ca_cert_pem: String,
    pub started: Instant,
    /// Stops long-running requests (watches) at shutdown.
    pub shutdown: CancellationToken,
    /// See `Config::default_toleration_seconds`.
    pub default_toleration_seconds: i64,
    /// See `Config::default_unreachable_toleration_seconds`.
    pub default_unreachable_toleration_seconds: i64,
    /// Where `metrics.k8s.io` numbers come from.
    pub metrics: Arc<dyn crate::metrics::MetricsSource>,
    /// How the server reaches kubelets (logs, exec, attach, port-forward, stats).
    pub kubelet: crate::node_proxy::KubeletClient,
    /// Service cluster IPs and node ports.
    pub services: crate::service_alloc::Allocator,
}

/// Namespaces that always exist.
pub const SYSTEM_NAMESPACES: &[&str] =
    &["default", "kube-system", "kube-public", "kube-node-lease"];

/// Opens the store, prepares credentials and system namespaces, and starts serving.
pub async fn start(cfg: Config) -> Result<Running> {
    let started = Instant::now();
    cfg.services.check()?;
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating {}", cfg.data_dir.display()))?;
    let server_dir = cfg.data_dir.join("server");
    let mut sans = cfg.tls_sans.clone();
    if !cfg.bind.ip().is_unspecified() {
        sans.push(cfg.bind.ip().to_string());
    }
    let pki = {
        let dir = server_dir.clone();
        tokio::task::spawn_blocking(move || Pki::load_or_create(&dir, &sans)).await??
    };
    let store_dir = server_dir.join("db");
    let opts = cfg.store.clone();
    let store = tokio::task::spawn_blocking(move || store::EmbeddedStore::open(&store_dir, opts))
        .await?
        .context("opening the store")?;
    let services = crate::service_alloc::Allocator::new(cfg.services.clone())?;
    let shutdown = CancellationToken::new();
    let store = store as Arc<dyn Store>;
    let kubelet_metrics = Arc::new(crate::metrics::KubeletMetrics::new(store.clone()));
    let server = Arc::new(ApiServer {
        store,
        resources: Resources::new(),
        authorizer: Box::new(auth::AllowAuthenticated),
        token: pki.token.clone(),
        ca_cert_pem: pki.ca_cert_pem.clone(),
        started,
        shutdown: shutdown.clone(),
        default_toleration_seconds: cfg.default_toleration_seconds,
        default_unreachable_toleration_seconds: cfg.default_unreachable_toleration_seconds,
        metrics: kubelet_metrics.clone(),
        kubelet: crate::node_proxy::KubeletClient::new(
            &pki.kubelet_client_cert_pem,
            &pki.kubelet_client_key_pem,
        )?,
        services,
    });
    server.bootstrap().await?;
    tokio::spawn(kubelet_metrics.run(Arc::downgrade(&server), shutdown.clone()));

    let listener = TcpListener::bind(cfg.bind)
        .await
        .with_context(|| format!("listening on {}", cfg.bind))?;
    let addr = listener.local_addr()?;
    let advertised = SocketAddr::new(
        cfg.advertise_address.unwrap_or(match addr.ip() {
            ip if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            ip => ip,
        }),
        addr.port(),
    );
    if let Err(e) = crate::system_services::ensure(&server, advertised).await {
        tracing::warn!("ensuring the cluster's system Services: {e:#}");
    }
    tokio::spawn(crate::system_services::run(
        Arc::downgrade(&server),
        advertised,
        shutdown.clone(),
    ));
    let host = if addr.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        addr.ip().to_string()
    };
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host
    };
    let kubeconfig = cfg
        .kubeconfig
        .clone()
        .unwrap_or_else(|| cfg.data_dir.join("kubeconfig.yaml"));
    if let Some(parent) = kubeconfig.parent() {
        std::fs::create_dir_all(parent)?;
    }
    write_private(
        &kubeconfig,
        &pki.admin_kubeconfig(&format!("https://{host}:{}", addr.port())),
    )?;

    let tls = crate::http::tls_config(&pki)?;
    let task = tokio::spawn(crate::http::serve(
        server.clone(),
        listener,
        tls,
        shutdown.clone(),
    ));
    Ok(Running {
        server,
        addr,
        kubeconfig,
        token: pki.token,
        ready_after: started.elapsed(),
        task,
        shutdown,
    })
}

fn write_private(path: &std::path::Path, contents: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

impl ApiServer {
    /// Creates the system namespaces and loads CRDs from the store.
    async fn bootstrap(&self) -> Result<()> {
        let ns = self
            .resources
            .get("", "v1", "namespaces")
            .context("namespaces are not registered")?;
        for name in SYSTEM_NAMESPACES {
            if self.store.get(&ns.key(None, name))?.is_some() {
                continue;
            }
            let mut obj =
                json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": name } });
            crate::rest::prepare_new(&ns, &mut obj, "", None);
            api::defaults::apply("", "v1", "Namespace", &mut obj);
            obj["status"] = json!({ "phase": "Active" });
            match self.store.create(&ns.key(None, name), obj).await {
                Ok(_) | Err(store::Error::AlreadyExists { .. }) => {}
                Err(e) => return Err(e).context("creating a system namespace"),
            }
        }
        crate::admission::bootstrap_priority_classes(self).await?;
        crate::crd::reload(self)?;
        crate::service_alloc::restore(self).await?;
        Ok(())
    }

    pub fn authenticate_token(&self, headers: &http::HeaderMap) -> Option<UserInfo> {
        let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))?
            .trim();
        // Like k3s, the full `K10…::server:<secret>` token and its secret alone both work.
        // `|`, not `||`: both comparisons always run, so timing tells nothing about which.
        let secret = crate::pki::token_secret(&self.token);
        let ok = auth::constant_time_eq(token.as_bytes(), self.token.as_bytes())
            | auth::constant_time_eq(token.as_bytes(), secret.as_bytes());
        ok.then(|| UserInfo {
            name: "skiff:agent".into(),
            uid: String::new(),
            groups: vec!["system:nodes".into(), "system:authenticated".into()],
        })
    }

    pub async fn route(self: &Arc<Self>, req: Req) -> Response<Body> {
        let path = req.path.clone();
        let result = match path.as_str() {
            "/healthz" | "/livez" | "/readyz" => Ok(self.health(&path, &req)),
            p if p.starts_with("/healthz/")
                || p.starts_with("/livez/")
                || p.starts_with("/readyz/") =>
            {
                Ok(self.health(&path, &req))
            }
            "/version" => Ok(crate::http::json(200, &version())),
            // Unauthenticated like k3s's: agents fetch the CA here and check it against the
            // hash in their join token before trusting anything else.
            "/cacerts" if req.method == Method::GET || req.method == Method::HEAD => Ok(
                crate::http::respond(200, "text/plain; charset=utf-8", self.ca_cert_pem.clone()),
            ),
            _ => self.route_authorized(req).await,
        };
        result.unwrap_or_else(|e| crate::http::error(&e))
    }

    fn health(&self, path: &str, req: &Req) -> Response<Body> {
        let ok = self.store.get("/registry/health").is_ok();
        if req.query.get("verbose").is_some() {
            let check = if ok {
                "[+]etcd ok"
            } else {
                "[-]etcd failed: reason withheld"
            };
            let body = format!(
                "[+]ping ok\n{check}\n{} check {}\n",
                path.trim_start_matches('/'),
                if ok { "passed" } else { "failed" }
            );
            return crate::http::respond(
                if ok { 200 } else { 500 },
                "text/plain; charset=utf-8",
                body,
            );
        }
        if ok {
            crate::http::respond(200, "text/plain; charset=utf-8", "ok")
        } else {
            crate::http::respond(
                500,
                "text/plain; charset=utf-8",
                "[-]etcd failed: reason withheld\nhealthz check failed",
            )
        }
    }

    async fn route_authorized(self: &Arc<Self>, req: Req) -> Result<Response<Body>, ApiError> {
        let path = req.path.clone();
        if let Some(rp) = crate::request::parse_resource_path(&path) {
            return crate::rest::handle(self, req, rp).await;
        }
        let attrs = auth::Attributes {
            verb: "get",
            group: "",
            resource: "",
            subresource: None,
            namespace: None,
            name: None,
            path: &path,
        };
        if let Decision::Deny(why) = self.authorizer.authorize(&req.user, &attrs) {
            return Err(ApiError::forbidden(why));
        }
        if req.method != Method::GET && req.method != Method::HEAD {
            return Err(ApiError::method_not_allowed(format!(
                "the server does not allow this method on the requested resource ({path})"
            )));
        }
        crate::discovery::route(self, &req).ok_or_else(ApiError::not_found_path)
    }
}

/// What `/version` reports: Kubernetes 1.33 (kubectl's dispatcher picks its version from it).
pub fn version() -> serde_json::Value {
    json!({
        "major": "1",
        "minor": "33",
        "gitVersion": "v1.33.0-skiff",
        "gitCommit": option_env!("SKIFF_GIT_COMMIT").unwrap_or("unknown"),
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "rust",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, if std::env::consts::ARCH == "x86_64" { "amd64" } else { std::env::consts::ARCH }),
    })
}
