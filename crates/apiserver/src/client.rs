//! A minimal HTTPS client for skiff's own tools (the benchmark and tests): one HTTP/2
//! connection authenticated with a kubeconfig's client certificate.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;

/// An HTTP/2 connection to a skiff server authenticated with a kubeconfig's client certificate.
#[derive(Clone)]
pub struct Client {
    tx: SendRequest<Full<Bytes>>,
}

impl Client {
    /// Connects to `127.0.0.1:port` as the kubeconfig's user.
    pub async fn connect(kubeconfig: &Path, port: u16) -> Result<Client> {
        let tls = tls_connect(kubeconfig, port, b"h2").await?;
        let (tx, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        Ok(Client { tx })
    }

    /// Sends a JSON request; returns the status and the whole body.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes)> {
        let resp = self.send(method, path, body, "application/json").await?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        Ok((status, bytes))
    }

    /// Sends a prepared request (any content type).
    pub async fn send_raw(
        &self,
        req: Request<Full<Bytes>>,
    ) -> Result<http::Response<hyper::body::Incoming>> {
        let mut tx = self.tx.clone();
        tx.ready().await?;
        Ok(tx.send_request(req).await?)
    }

    /// Sends a request and returns the response with its body unread (for watches).
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        accept: &str,
    ) -> Result<http::Response<hyper::body::Incoming>> {
        let req = Request::builder()
            .method(method)
            .uri(format!("https://localhost{path}"))
            .header("content-type", "application/json")
            .header("accept", accept)
            .body(Full::new(Bytes::from(body.unwrap_or_default())))?;
        let mut tx = self.tx.clone();
        tx.ready().await?;
        Ok(tx.send_request(req).await?)
    }
}

/// A TLS connection to `127.0.0.1:port` as the kubeconfig's user, offering `alpn` (`h2`, or
/// `http/1.1` for a WebSocket upgrade).
pub async fn tls_connect(
    kubeconfig: &Path,
    port: u16,
    alpn: &[u8],
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    use base64::Engine as _;
    let kc: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(kubeconfig)?)?;
    let b64 = |v: &Value| -> Result<Vec<u8>> {
        Ok(base64::engine::general_purpose::STANDARD
            .decode(v.as_str().context("missing kubeconfig field")?)?)
    };
    let ca = b64(&kc["clusters"][0]["cluster"]["certificate-authority-data"])?;
    let cert = b64(&kc["users"][0]["user"]["client-certificate-data"])?;
    let key = b64(&kc["users"][0]["user"]["client-key-data"])?;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut ca.as_slice()) {
        roots.add(c?)?;
    }
    let certs = rustls_pemfile::certs(&mut cert.as_slice()).collect::<Result<Vec<_>, _>>()?;
    let key = rustls_pemfile::private_key(&mut key.as_slice())?.context("no client key")?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)?;
    cfg.alpn_protocols = vec![alpn.to_vec()];
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    tcp.set_nodelay(true)?;
    let name = rustls::pki_types::ServerName::try_from("localhost")?;
    Ok(tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await?)
}
