//! The HTTPS front: TLS with optional client certificates, HTTP/1.1 and HTTP/2, authentication,
//! the body size limit, and routing to discovery, OpenAPI, health and resource handlers.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{self, UserInfo};
use crate::error::ApiError;
use crate::server::ApiServer;

pub type Body = BoxBody<Bytes, std::io::Error>;

/// Upstream's limit on request bodies.
pub const MAX_BODY: usize = 3 * 1024 * 1024;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

pub fn respond(code: u16, content_type: &str, bytes: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(full(bytes));
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(v) = HeaderValue::from_str(content_type) {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r
}

pub fn json(code: u16, v: &Value) -> Response<Body> {
    respond(
        code,
        "application/json",
        serde_json::to_vec(v).unwrap_or_default(),
    )
}

pub fn error(e: &ApiError) -> Response<Body> {
    json(e.code, &e.to_status())
}

/// A request as the handlers see it: the parts, the collected body, and who sent it.
pub struct Req {
    pub method: Method,
    pub path: String,
    pub query: crate::request::Query,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    pub user: UserInfo,
    /// The raw request, for upgrades (exec, attach, port-forward).
    pub upgrade: Option<hyper::upgrade::OnUpgrade>,
}

impl Req {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Serves HTTPS on `listener` until `shutdown`; open connections get a grace period to finish.
pub async fn serve(
    server: Arc<ApiServer>,
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    shutdown: CancellationToken,
) {
    let acceptor = TlsAcceptor::from(tls);
    let tracker = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let (acceptor, server, shutdown) = (acceptor.clone(), server.clone(), shutdown.clone());
        tracker.spawn(async move {
            let tls = match tokio::time::timeout(
                std::time::Duration::from_secs(10),
                acceptor.accept(stream),
            )
            .await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, "tls handshake failed: {e}");
                    return;
                }
                Err(_) => return,
            };
            let cert_user = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| auth::user_from_cert(c.as_ref()));
            let svc = hyper::service::service_fn(move |req| {
                let (server, cert_user) = (server.clone(), cert_user.clone());
                async move { Ok::<_, Infallible>(handle(server, req, cert_user, peer).await) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), svc);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), conn).await;
                }
            }
        });
    }
    tracker.close();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(6), tracker.wait()).await;
}

async fn handle(
    server: Arc<ApiServer>,
    mut req: Request<Incoming>,
    cert_user: Option<UserInfo>,
    peer: SocketAddr,
) -> Response<Body> {
    let start = std::time::Instant::now();
    let path = req.uri().path().to_string();
    let method = req.method().clone();

    // Health and version are public, as upstream's system:public-info-viewer makes them.
    let public = matches!(
        path.as_str(),
        "/healthz" | "/livez" | "/readyz" | "/version" | "/cacerts"
    ) || path.starts_with("/healthz/")
        || path.starts_with("/livez/")
        || path.starts_with("/readyz/");
    let user = match cert_user.or_else(|| server.authenticate_token(req.headers())) {
        Some(u) => u,
        None if public => UserInfo::anonymous(),
        None => return error(&ApiError::unauthorized()),
    };

    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_BODY) {
        drain(req.into_body()).await;
        return error(&ApiError::too_large());
    }
    let upgrade = req
        .headers()
        .contains_key(header::UPGRADE)
        .then(|| hyper::upgrade::on(&mut req));
    let (parts, mut body) = req.into_parts();
    let collected = Limited::new(&mut body, MAX_BODY)
        .collect()
        .await
        .map(|b| b.to_bytes());
    let body = match collected {
        Ok(b) => b,
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            drain(body).await;
            return error(&ApiError::too_large());
        }
        Err(e) => {
            return error(&ApiError::bad_request(format!(
                "reading the request body failed: {e}"
            )));
        }
    };
    let r = Req {
        method,
        path: path.clone(),
        query: crate::request::Query::parse(parts.uri.query()),
        headers: parts.headers,
        body,
        user,
        upgrade,
    };
    let resp = server.route(r).await;
    tracing::debug!(%peer, method = %parts.method, %path, status = resp.status().as_u16(), elapsed_us = start.elapsed().as_micros() as u64, "request");
    resp
}

/// Reads and discards what is left of an oversized body (bounded in bytes and time), so a
/// client still sending it reads the 413 instead of a reset connection.
async fn drain(mut body: Incoming) {
    let mut left: usize = 64 * 1024 * 1024;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while left > 0 {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(Some(Ok(f))) => left = left.saturating_sub(f.data_ref().map_or(0, |d| d.len())),
            _ => break,
        }
    }
}

/// The server's TLS configuration: our serving certificate, client certificates optional but
/// verified against our CA when presented.
pub fn tls_config(pki: &crate::pki::Pki) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    use anyhow::Context as _;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs: Vec<_> =
        rustls_pemfile::certs(&mut pki.serving_cert_pem.as_bytes()).collect::<Result<_, _>>()?;
    let key = rustls_pemfile::private_key(&mut pki.serving_key_pem.as_bytes())?
        .context("no serving key")?;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut pki.ca_cert_pem.as_bytes()) {
        roots.add(c?)?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .context("building the client certificate verifier")?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .context("loading the serving certificate")?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}
