//! The API server's side of the kubelet API: `pods/log` streamed from the pod's kubelet, and
//! `pods/exec`, `attach` and `portforward` relayed as upgraded connections (upstream's
//! UpgradeAwareHandler): the client's upgrade request goes to the kubelet, the kubelet's 101
//! comes back, then bytes flow both ways untouched, so WebSocket, SPDY and SPDY-in-WebSocket
//! all work end to end between kubectl and the kubelet.
//!
//! The API server authenticates to kubelets with the `kube-apiserver-kubelet-client`
//! certificate (`pki`). It does not verify kubelet serving certificates, like upstream's
//! without `--kubelet-certificate-authority`: kubelets serve self-signed ones.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde_json::Value;
use thiserror::Error;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::error::{ApiError, ApiResult};
use crate::http::Body;
use crate::rest::{self, Ctx};

/// Node annotation of nodes played by `skiff agent --simulated-nodes`: they have no kubelet.
pub const SIMULATED_NODE_ANNOTATION: &str = "skiff.dev/simulated";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why talking to a kubelet failed.
#[derive(Debug, Error)]
pub enum ProxyError {
    #[error("dialing the kubelet at {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("dialing the kubelet at {addr}: timed out")]
    Timeout { addr: SocketAddr },
    #[error("talking to the kubelet at {addr}: {source}")]
    Http {
        addr: SocketAddr,
        #[source]
        source: hyper::Error,
    },
    #[error("the kubelet at {addr} answered {status}: {body}")]
    Status {
        addr: SocketAddr,
        status: StatusCode,
        body: String,
    },
    #[error("the kubelet client credentials: {0}")]
    Credentials(String),
}

/// An HTTPS client for kubelets: presents the API server's kubelet client certificate, does
/// not verify the kubelet's (see the module documentation).
#[derive(Clone)]
pub struct KubeletClient {
    tls: TlsConnector,
}

impl std::fmt::Debug for KubeletClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeletClient").finish_non_exhaustive()
    }
}

/// Accepts any kubelet serving certificate but still checks the handshake signatures, so the
/// peer holds the key of the certificate it shows.
#[derive(Debug)]
struct AnyKubeletCert(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyKubeletCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

impl KubeletClient {
    /// A client presenting `cert_pem`/`key_pem`.
    pub fn new(cert_pem: &str, key_pem: &str) -> Result<KubeletClient, ProxyError> {
        let bad =
            |what: &str, e: &dyn std::fmt::Display| ProxyError::Credentials(format!("{what}: {e}"));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certs: Vec<_> = rustls_pemfile::certs(&mut cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| bad("reading the certificate", &e))?;
        let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
            .map_err(|e| bad("reading the key", &e))?
            .ok_or_else(|| ProxyError::Credentials("the key PEM holds no private key".into()))?;
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| bad("choosing TLS versions", &e))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyKubeletCert(provider)))
            .with_client_auth_cert(certs, key)
            .map_err(|e| bad("loading the certificate", &e))?;
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(KubeletClient {
            tls: TlsConnector::from(Arc::new(cfg)),
        })
    }

    /// Sends one request on a fresh connection (upgrades keep it; plain responses end it).
    pub async fn send(
        &self,
        addr: SocketAddr,
        req: Request<Empty<Bytes>>,
    ) -> Result<Response<Incoming>, ProxyError> {
        let dial = async {
            let tcp = TcpStream::connect(addr)
                .await
                .map_err(|source| ProxyError::Connect { addr, source })?;
            let _ = tcp.set_nodelay(true);
            let name = ServerName::IpAddress(addr.ip().into());
            self.tls
                .connect(name, tcp)
                .await
                .map_err(|source| ProxyError::Connect { addr, source })
        };
        let tls = tokio::time::timeout(CONNECT_TIMEOUT, dial)
            .await
            .map_err(|_| ProxyError::Timeout { addr })??;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|source| ProxyError::Http { addr, source })?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(%addr, "kubelet connection: {e}");
            }
        });
        sender
            .send_request(req)
            .await
            .map_err(|source| ProxyError::Http { addr, source })
    }

    /// `GET /stats/summary` of the kubelet at `addr`, as JSON.
    pub async fn stats_summary(&self, addr: SocketAddr) -> Result<Value, ProxyError> {
        let req = Request::get("/stats/summary")
            .header(header::HOST, addr.to_string())
            .body(Empty::new())
            .map_err(|e| ProxyError::Credentials(e.to_string()))?;
        let resp = tokio::time::timeout(Duration::from_secs(10), self.send(addr, req))
            .await
            .map_err(|_| ProxyError::Timeout { addr })??;
        let status = resp.status();
        let body = tokio::time::timeout(Duration::from_secs(10), resp.into_body().collect())
            .await
            .map_err(|_| ProxyError::Timeout { addr })?
            .map_err(|source| ProxyError::Http { addr, source })?
            .to_bytes();
        if !status.is_success() {
            return Err(ProxyError::Status {
                addr,
                status,
                body: String::from_utf8_lossy(&body).into_owned(),
            });
        }
        serde_json::from_slice(&body).map_err(|e| ProxyError::Status {
            addr,
            status,
            body: format!("not JSON: {e}"),
        })
    }
}

/// Where a node's kubelet listens: its first InternalIP (else any IP address it reports) and
/// `status.daemonEndpoints.kubeletEndpoint.Port`. `None` for simulated nodes and nodes
/// without either.
pub fn kubelet_endpoint(node: &Value) -> Option<SocketAddr> {
    let simulated = node["metadata"]["annotations"]
        .get(SIMULATED_NODE_ANNOTATION)
        .is_some();
    if simulated {
        return None;
    }
    let port = node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"].as_u64()?;
    let port = u16::try_from(port).ok().filter(|p| *p > 0)?;
    let addresses = node["status"]["addresses"].as_array()?;
    let ip_of = |a: &Value| a["address"].as_str().and_then(|s| s.parse::<IpAddr>().ok());
    let ip = addresses
        .iter()
        .filter(|a| a["type"] == "InternalIP")
        .find_map(ip_of)
        .or_else(|| addresses.iter().find_map(ip_of))?;
    Some(SocketAddr::new(ip, port))
}

/// Percent-encodes a query component.
fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The names of a pod's containers of one kind (`containers`, `initContainers`,
/// `ephemeralContainers`).
fn names(pod: &Value, field: &str) -> Vec<String> {
    pod["spec"][field]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str().map(str::to_string))
        .collect()
}

/// The container a request is about: the one named, or the only one; upstream's errors
/// otherwise.
fn container_of(pod: &Value, pod_name: &str, asked: Option<&str>) -> ApiResult<String> {
    let containers = names(pod, "containers");
    let init = names(pod, "initContainers");
    let ephemeral = names(pod, "ephemeralContainers");
    match asked.filter(|c| !c.is_empty()) {
        Some(c) => {
            if containers
                .iter()
                .chain(&init)
                .chain(&ephemeral)
                .any(|n| n == c)
            {
                Ok(c.to_string())
            } else {
                Err(ApiError::bad_request(format!(
                    "container {c} is not valid for pod {pod_name}"
                )))
            }
        }
        None if containers.len() == 1 => Ok(containers[0].clone()),
        None => {
            let mut msg = format!(
                "a container name must be specified for pod {pod_name}, choose one of: [{}]",
                containers.join(" ")
            );
            if !init.is_empty() {
                msg.push_str(&format!(
                    " or one of the init containers: [{}]",
                    init.join(" ")
                ));
            }
            if !ephemeral.is_empty() {
                msg.push_str(&format!(
                    " or one of the ephemeral containers: [{}]",
                    ephemeral.join(" ")
                ));
            }
            Err(ApiError::bad_request(msg))
        }
    }
}

/// The query to forward: the named parameters, each value as given.
fn forward_query(ctx: &Ctx<'_>, keys: &[&str]) -> String {
    let mut parts = Vec::new();
    for k in keys {
        for v in ctx.req.query.all(k) {
            parts.push(format!("{}={}", enc(k), enc(v)));
        }
    }
    parts.join("&")
}

/// Headers an upgrade carries to the kubelet and back.
const UPGRADE_REQUEST_HEADERS: &[&str] = &[
    "upgrade",
    "connection",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-protocol",
    "x-stream-protocol-version",
];
const UPGRADE_RESPONSE_HEADERS: &[&str] = &[
    "upgrade",
    "connection",
    "sec-websocket-accept",
    "sec-websocket-protocol",
    "x-stream-protocol-version",
];

/// `pods/{log,exec,attach,portforward,proxy}`.
pub async fn handle(ctx: &Ctx<'_>, sub: &str, name: &str) -> ApiResult<Response<Body>> {
    let streaming = matches!(sub, "exec" | "attach" | "portforward");
    if streaming {
        // Upstream requires `create` on these even for the WebSocket GET.
        let attrs = crate::auth::Attributes {
            verb: "create",
            group: "",
            resource: "pods",
            subresource: Some(sub),
            namespace: ctx.ns.as_deref(),
            name: Some(name),
            path: &ctx.req.path,
        };
        if let crate::auth::Decision::Deny(why) =
            ctx.server.authorizer.authorize(&ctx.req.user, &attrs)
        {
            return Err(ApiError::forbidden(why));
        }
    }
    let (pod, _) = rest::read(ctx, name)?;
    let node_name = match pod["spec"]["nodeName"].as_str() {
        None | Some("") => {
            return Err(ApiError::bad_request(format!(
                "pod {name} does not have a host assigned"
            )));
        }
        Some(n) => n.to_string(),
    };
    let ns = ctx.ns.clone().unwrap_or_default();
    let (path, keys): (String, &[&str]) = match sub {
        "log" => {
            let c = container_of(&pod, name, ctx.req.query.get("container"))?;
            (
                format!("/containerLogs/{}/{}/{}", enc(&ns), enc(name), enc(&c)),
                &[
                    "follow",
                    "previous",
                    "sinceSeconds",
                    "sinceTime",
                    "timestamps",
                    "tailLines",
                    "limitBytes",
                ],
            )
        }
        "exec" | "attach" => {
            let c = container_of(&pod, name, ctx.req.query.get("container"))?;
            (
                format!("/{sub}/{}/{}/{}", enc(&ns), enc(name), enc(&c)),
                &["command", "stdin", "stdout", "stderr", "tty"],
            )
        }
        "portforward" => (
            format!("/portForward/{}/{}", enc(&ns), enc(name)),
            &["ports"],
        ),
        _ => {
            return Err(ApiError::method_not_allowed(format!(
                "the {sub} subresource of pods is not served yet"
            )));
        }
    };
    let node_key = crate::admission::stored_prefix("", "nodes", None) + &node_name;
    let node: Option<Value> = ctx
        .server
        .store
        .get(&node_key)
        .map_err(rest::store_error)?
        .and_then(|kv| serde_json::from_slice(&kv.value).ok());
    let addr = node.as_ref().and_then(kubelet_endpoint).ok_or_else(|| {
        ApiError::service_unavailable(format!("no kubelet connection to node {node_name:?}"))
    })?;
    let query = forward_query(ctx, keys);
    let uri = if query.is_empty() {
        path
    } else {
        format!("{path}?{query}")
    };
    if streaming {
        relay_upgrade(ctx, addr, &uri).await
    } else {
        stream_logs(ctx, addr, &uri).await
    }
}

fn kubelet_error(node_addr: SocketAddr, e: ProxyError) -> ApiError {
    tracing::debug!(%node_addr, "kubelet request failed: {e}");
    ApiError::service_unavailable(e.to_string())
}

/// Relays the kubelet's answer: status, content type and the body as it streams.
fn relay_response(resp: Response<Incoming>) -> Response<Body> {
    let (parts, body) = resp.into_parts();
    let mut out = Response::new(body.map_err(std::io::Error::other).boxed());
    *out.status_mut() = parts.status;
    if let Some(ct) = parts.headers.get(header::CONTENT_TYPE) {
        out.headers_mut().insert(header::CONTENT_TYPE, ct.clone());
    }
    out
}

async fn stream_logs(ctx: &Ctx<'_>, addr: SocketAddr, uri: &str) -> ApiResult<Response<Body>> {
    let req = Request::get(uri)
        .header(header::HOST, addr.to_string())
        .body(Empty::new())
        .map_err(|e| ApiError::bad_request(format!("building the kubelet request: {e}")))?;
    let resp = ctx
        .server
        .kubelet
        .send(addr, req)
        .await
        .map_err(|e| kubelet_error(addr, e))?;
    Ok(relay_response(resp))
}

async fn relay_upgrade(ctx: &Ctx<'_>, addr: SocketAddr, uri: &str) -> ApiResult<Response<Body>> {
    let client_upgrade = match (&ctx.req.upgrade, ctx.req.header("upgrade")) {
        (Some(u), Some(_)) => u.clone(),
        _ => return Err(ApiError::bad_request("Upgrade request required")),
    };
    let method = if ctx.req.method == Method::POST {
        Method::POST
    } else {
        Method::GET
    };
    let mut builder = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::HOST, addr.to_string());
    for name in UPGRADE_REQUEST_HEADERS {
        for v in ctx.req.headers.get_all(*name) {
            builder = builder.header(*name, v.clone());
        }
    }
    let req = builder
        .body(Empty::new())
        .map_err(|e| ApiError::bad_request(format!("building the kubelet request: {e}")))?;
    let mut resp = ctx
        .server
        .kubelet
        .send(addr, req)
        .await
        .map_err(|e| kubelet_error(addr, e))?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Ok(relay_response(resp));
    }
    let kubelet_upgrade = hyper::upgrade::on(&mut resp);
    let mut out = Response::new(crate::http::full(Bytes::new()));
    *out.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    for name in UPGRADE_RESPONSE_HEADERS {
        for v in resp.headers().get_all(*name) {
            out.headers_mut().append(*name, v.clone());
        }
    }
    if !out.headers().contains_key(header::CONNECTION) {
        out.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    }
    let shutdown = ctx.server.shutdown.clone();
    tokio::spawn(async move {
        let (client, kubelet) = tokio::join!(client_upgrade, kubelet_upgrade);
        let (client, kubelet) = match (client, kubelet) {
            (Ok(c), Ok(k)) => (c, k),
            (c, k) => {
                tracing::debug!(%addr, client_ok = c.is_ok(), kubelet_ok = k.is_ok(), "upgrade failed");
                return;
            }
        };
        let (mut client, mut kubelet) = (TokioIo::new(client), TokioIo::new(kubelet));
        tokio::select! {
            r = tokio::io::copy_bidirectional(&mut client, &mut kubelet) => {
                if let Err(e) = r {
                    tracing::debug!(%addr, "relay ended: {e}");
                }
            }
            _ = shutdown.cancelled() => {}
        }
    });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn containers_are_chosen_like_upstream() {
        let pod = json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}], "initContainers": [{"name": "i"}]}});
        let cases: &[(Option<&str>, Result<&str, &str>)] = &[
            (Some("a"), Ok("a")),
            (Some("i"), Ok("i")),
            (Some("c"), Err("container c is not valid for pod p")),
            (
                None,
                Err(
                    "a container name must be specified for pod p, choose one of: [a b] or one of the init containers: [i]",
                ),
            ),
        ];
        for (asked, want) in cases {
            let got = container_of(&pod, "p", *asked).map_err(|e| e.message);
            assert_eq!(got.as_deref().map_err(String::as_str), *want, "{asked:?}");
        }
        let single = json!({"spec": {"containers": [{"name": "only"}]}});
        assert_eq!(container_of(&single, "p", None).unwrap(), "only");
        assert_eq!(container_of(&single, "p", Some("")).unwrap(), "only");
    }

    #[test]
    fn kubelet_endpoints_come_from_node_status() {
        let node = |ann: bool, port: Value, addrs: Value| {
            let mut n = json!({"metadata": {"name": "n"}, "status": {"addresses": addrs, "daemonEndpoints": {"kubeletEndpoint": {"Port": port}}}});
            if ann {
                n["metadata"]["annotations"] = json!({ SIMULATED_NODE_ANNOTATION: "true" });
            }
            n
        };
        let addrs = json!([{"type": "Hostname", "address": "h"}, {"type": "InternalIP", "address": "10.0.0.5"}]);
        assert_eq!(
            kubelet_endpoint(&node(false, json!(10250), addrs.clone())),
            Some("10.0.0.5:10250".parse().unwrap())
        );
        assert_eq!(
            kubelet_endpoint(&node(true, json!(10250), addrs.clone())),
            None
        );
        assert_eq!(
            kubelet_endpoint(&node(false, json!(0), addrs.clone())),
            None
        );
        assert_eq!(kubelet_endpoint(&node(false, json!(70000), addrs)), None);
        assert_eq!(
            kubelet_endpoint(&node(
                false,
                json!(1),
                json!([{"type": "Hostname", "address": "h"}])
            )),
            None
        );
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(enc("sh -c 'exit 3'"), "sh%20-c%20%27exit%203%27");
        assert_eq!(enc("a/b?c=d&e"), "a%2Fb%3Fc%3Dd%26e");
    }
}
