//! The kubelet server's TLS: its serving certificate (given, or self-signed on the spot) and
//! mandatory client certificates signed by the cluster CA.

use std::sync::Arc;

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};

use super::ServerError;

/// A certificate and its private key, PEM.
#[derive(Clone)]
pub struct ServingCert {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for ServingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingCert").finish_non_exhaustive()
    }
}

/// How the kubelet server authenticates itself and its clients.
#[derive(Debug, Clone)]
pub struct KubeletTls {
    /// The cluster CA (PEM): every client must present a certificate it signed.
    pub client_ca_pem: String,
    /// The serving certificate; `None` generates a self-signed one for `localhost`, the
    /// loopback addresses and the host name (the API server does not verify it, like
    /// upstream's without `--kubelet-certificate-authority`).
    pub serving: Option<ServingCert>,
}

/// A self-signed serving certificate for `names` (DNS names or IP addresses) plus
/// `localhost`, 127.0.0.1, ::1 and the host name.
pub fn self_signed_serving_cert(names: &[String]) -> Result<ServingCert, ServerError> {
    let mut all: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let h = h.trim();
        if !h.is_empty() {
            all.push(h.to_string());
        }
    }
    for n in names {
        if !all.contains(n) {
            all.push(n.clone());
        }
    }
    let tls = |what: &str, e: rcgen::Error| ServerError::Tls(format!("{what}: {e}"));
    let key = KeyPair::generate().map_err(|e| tls("generating the serving key", e))?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "skiff-kubelet");
    params.distinguished_name = dn;
    params.subject_alt_names = all
        .into_iter()
        .map(|n| match n.parse::<std::net::IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => n.try_into().map(SanType::DnsName),
        })
        .collect::<Result<_, _>>()
        .map_err(|e| tls("naming the serving certificate", e))?;
    let cert = params
        .self_signed(&key)
        .map_err(|e| tls("signing the serving certificate", e))?;
    Ok(ServingCert {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// The rustls configuration: our certificate, client certificates required and verified
/// against the CA, HTTP/1.1 only (upgrades to SPDY and WebSocket need it).
pub fn server_config(tls: &KubeletTls) -> Result<Arc<rustls::ServerConfig>, ServerError> {
    let bad = |what: &str, e: &dyn std::fmt::Display| ServerError::Tls(format!("{what}: {e}"));
    let serving = match &tls.serving {
        Some(s) => s.clone(),
        None => self_signed_serving_cert(&[])?,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs: Vec<_> = rustls_pemfile::certs(&mut serving.cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| bad("reading the serving certificate", &e))?;
    let key = rustls_pemfile::private_key(&mut serving.key_pem.as_bytes())
        .map_err(|e| bad("reading the serving key", &e))?
        .ok_or_else(|| ServerError::Tls("the serving key PEM holds no private key".into()))?;
    let mut roots = rustls::RootCertStore::empty();
    let mut any = false;
    for c in rustls_pemfile::certs(&mut tls.client_ca_pem.as_bytes()) {
        let c = c.map_err(|e| bad("reading the client CA", &e))?;
        roots.add(c).map_err(|e| bad("adding the client CA", &e))?;
        any = true;
    }
    if !any {
        return Err(ServerError::Tls(
            "the client CA PEM holds no certificate".into(),
        ));
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| bad("building the client certificate verifier", &e))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("choosing TLS versions", &e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| bad("loading the serving certificate", &e))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}
