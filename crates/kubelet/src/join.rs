//! Joining a cluster like a k3s agent: trust the server's CA only after checking it against
//! the hash carried in the join token, then talk to the API with the token as bearer.

use kube::Client;
use secrecy::SecretString;
use thiserror::Error;

/// Why an agent could not join.
#[derive(Debug, Error)]
pub enum JoinError {
    #[error(
        "the join token is not in the K10<ca-hash>::<user>:<secret> format (use the server's <data-dir>/server/token)"
    )]
    TokenFormat,
    #[error("invalid server URL {url:?}: {reason}")]
    ServerUrl { url: String, reason: String },
    #[error("fetching the cluster CA from {url}/cacerts: {reason}")]
    FetchCa { url: String, reason: String },
    #[error(
        "the server's CA certificate does not match the join token (token pins sha256 {expected}, server sent {actual}): wrong token or wrong server"
    )]
    CaMismatch { expected: String, actual: String },
    #[error("the server's CA certificate is not valid PEM: {0}")]
    CaPem(String),
    #[error("building the API client: {0}")]
    Client(#[source] kube::Error),
}

/// A parsed `K10<sha256 of the CA PEM>::<user>:<secret>` join token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// Lowercase hex SHA-256 of the CA certificate PEM the server serves at `/cacerts`.
    pub ca_hash: String,
    pub user: String,
    pub secret: String,
}

impl JoinToken {
    pub fn parse(token: &str) -> Result<JoinToken, JoinError> {
        let rest = token
            .trim()
            .strip_prefix("K10")
            .ok_or(JoinError::TokenFormat)?;
        let (hash, creds) = rest.split_once("::").ok_or(JoinError::TokenFormat)?;
        let (user, secret) = creds.split_once(':').ok_or(JoinError::TokenFormat)?;
        let hex = hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex || secret.is_empty() {
            return Err(JoinError::TokenFormat);
        }
        Ok(JoinToken {
            ca_hash: hash.to_ascii_lowercase(),
            user: user.to_string(),
            secret: secret.to_string(),
        })
    }
}

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What joining produced: the client, and the CA it now trusts (PEM).
pub struct Joined {
    pub client: Client,
    pub ca_pem: String,
}

/// Fetches `/cacerts` from `server` without verifying TLS (there is nothing to verify against
/// yet), checks it against the token's hash, and builds a client that trusts only that CA and
/// authenticates with the full token.
pub async fn join(server: &str, token: &str) -> Result<Joined, JoinError> {
    let parsed = JoinToken::parse(token)?;
    let server = server.trim_end_matches('/');
    let url: http::Uri =
        server
            .parse()
            .map_err(|e: http::uri::InvalidUri| JoinError::ServerUrl {
                url: server.to_string(),
                reason: e.to_string(),
            })?;
    if url.scheme_str() != Some("https") || url.host().is_none() {
        return Err(JoinError::ServerUrl {
            url: server.to_string(),
            reason: "expected https://host:port".into(),
        });
    }

    let mut insecure = kube::Config::new(url.clone());
    insecure.accept_invalid_certs = true;
    insecure.default_retry = false;
    let insecure = Client::try_from(insecure).map_err(JoinError::Client)?;
    let fetch = |e: kube::Error| JoinError::FetchCa {
        url: server.to_string(),
        // The API error's Display repeats itself with a Debug dump; one line is enough.
        reason: match e {
            kube::Error::Api(s) => format!("HTTP {} {}", s.code, s.message),
            other => other.to_string(),
        },
    };
    let req = http::Request::get("/cacerts")
        .body(Vec::new())
        .map_err(|e| fetch(kube::Error::HttpError(e)))?;
    let ca_pem = insecure.request_text(req).await.map_err(fetch)?;
    let actual = sha256_hex(ca_pem.as_bytes());
    if actual != parsed.ca_hash {
        return Err(JoinError::CaMismatch {
            expected: parsed.ca_hash,
            actual,
        });
    }

    let mut ders = Vec::new();
    for item in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        ders.push(item.map_err(|e| JoinError::CaPem(e.to_string()))?.to_vec());
    }
    if ders.is_empty() {
        return Err(JoinError::CaPem("no CERTIFICATE block".into()));
    }
    let mut cfg = kube::Config::new(url);
    cfg.root_cert = Some(ders);
    cfg.auth_info.token = Some(SecretString::from(token.trim().to_string()));
    let client = Client::try_from(cfg).map_err(JoinError::Client)?;
    Ok(Joined { client, ca_pem })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_k10_tokens() {
        let hash = "a".repeat(64);
        let t = JoinToken::parse(&format!("K10{hash}::server:s3cret")).unwrap();
        assert_eq!(t.ca_hash, hash);
        assert_eq!(t.user, "server");
        assert_eq!(t.secret, "s3cret");
        for bad in [
            "plainsecret",
            "K10abc::server:x",
            &format!("K10{hash}::server:"),
            &format!("K10{hash}:server:x"),
            &format!("K10{}::server:x", "g".repeat(64)),
        ] {
            assert!(JoinToken::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sha256_is_hex() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
